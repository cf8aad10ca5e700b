"""ThreadTuner's decisions, with a fake clock: all threads kept while steps stay fast, one thread taken when they
slow down and one thread is faster, all threads back when the retry shows them faster again."""

import torch

import vitlab.callbacks as cb


def _run(monkeypatch, step_ms):
    """``step_ms(step, threads)``: the fake duration of each step; returns the thread count per step."""
    clock = [0.0]
    monkeypatch.setattr(cb.time, "perf_counter", lambda: clock[0])
    start = torch.get_num_threads()
    torch.set_num_threads(2)
    tuner = cb.ThreadTuner(window=5, trial=3, period=20)
    tuner.on_train_start(None, None)
    used = []
    try:
        for i in range(80):
            tuner.on_train_batch_start(None, None, None, i)
            used.append(torch.get_num_threads())
            clock[0] += step_ms(i, used[-1]) / 1000
        tuner.on_train_end(None, None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(start)
    return used


def test_idle_keeps_all_threads(monkeypatch):
    assert set(_run(monkeypatch, lambda i, t: 100 if t == 2 else 150)) == {2}


def test_a_busy_machine_gets_one_thread_and_all_again_when_it_is_idle(monkeypatch):
    busy = range(20, 50)  # steps 20-49: another job; two threads 12x slower, one thread 1.5x slower

    def ms(i, t):
        return (1200 if t == 2 else 150) if i in busy else (100 if t == 2 else 150)

    used = _run(monkeypatch, ms)
    assert used[:20] == [2] * 20 and 1 in used[20:35] and all(t == 1 for t in used[35:45])
    assert used[-5:] == [2] * 5  # the retry after ``period`` steps at one thread found two faster again
