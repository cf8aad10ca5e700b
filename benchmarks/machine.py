"""The machine block of every result: ``vitlab_edge/machine.py`` (standard library only), loaded from this checkout
by its path so that any interpreter can use it — the project's venv, a torch-free one, or none."""

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parent.parent / "export" / "vitlab_edge" / "machine.py"
_spec = importlib.util.spec_from_file_location("vitlab_machine", _path)
_module = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("vitlab_machine", _module)
_spec.loader.exec_module(_module)

machine_info, run_info, machine_label = _module.machine_info, _module.run_info, _module.machine_label

if __name__ == "__main__":
    _module.main()
