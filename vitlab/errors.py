"""One exception type for user-facing mistakes: the CLI prints its message as a single line."""


class VitlabError(ValueError):
    """Bad input from the user (unknown name, missing file, bad config). The message says what to do."""


def checkpoint_error(path: object, e: BaseException) -> VitlabError:
    """One line for a checkpoint ``torch.load`` could not read: refused by ``weights_only`` unpickling (more than
    tensors and plain data, or junk), unreadable, or truncated / corrupt; torch's own first sentence, not its advice
    to turn ``weights_only`` off."""
    import pickle

    lines = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()
    detail = f"{type(e).__name__}: {lines[0].split('. ')[0][:160] if lines else 'the file ends early'}"
    if isinstance(e, pickle.UnpicklingError):
        return VitlabError(f"refusing to load {path}: weights_only loading reads tensors and plain data only, and "
                           f"this checkpoint is something else or corrupt ({detail})")
    if isinstance(e, OSError):
        return VitlabError(f"cannot read the checkpoint {path}: {e}")
    return VitlabError(f"the checkpoint {path} is truncated or corrupt: torch.load failed ({detail})")
