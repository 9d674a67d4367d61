"""Save and retention policies: pure logic."""

import os
import signal

import pytest

from ckptflow.components.trainer import policies


def _progress(step, *, epoch_ended=False, now=0.0, last_saved_time=0.0, last_saved_step=None):
  return policies.Progress(step=step, epoch=0, epoch_ended=epoch_ended, now=now,
                           last_saved_step=last_saved_step, last_saved_time=last_saved_time)


def test_every_n_steps_saves_on_multiples_only():
  policy = policies.EveryNSteps(100)
  assert [s for s in range(1, 401) if policy.should_save(_progress(s))] == [100, 200, 300, 400]


def test_every_n_seconds_saves_once_the_interval_has_passed():
  policy = policies.EveryNSeconds(30)
  assert not policy.should_save(_progress(5, now=29.9, last_saved_time=0))
  assert policy.should_save(_progress(6, now=30.0, last_saved_time=0))


def test_at_epoch_end_saves_only_when_an_epoch_ends():
  policy = policies.AtEpochEnd()
  assert policy.should_save(_progress(10, epoch_ended=True))
  assert not policy.should_save(_progress(11))


def test_any_save_combines_and_asks_every_policy():
  policy = policies.AnySave((policies.EveryNSteps(100), policies.AtEpochEnd()))
  assert policy.should_save(_progress(37, epoch_ended=True))
  assert policy.should_save(_progress(200))
  assert not policy.should_save(_progress(201))


def test_on_signal_saves_after_sigterm_and_restores_the_old_handler():
  previous = signal.getsignal(signal.SIGTERM)
  policy = policies.OnSignal().install()
  try:
    assert not policy.should_save(_progress(3))
    os.kill(os.getpid(), signal.SIGTERM)
    assert policy.received == signal.SIGTERM
    assert policy.should_save(_progress(3))
    assert not policy.should_save(_progress(3, last_saved_step=3))  # already saved
  finally:
    policy.uninstall()
  assert signal.getsignal(signal.SIGTERM) == previous


@pytest.mark.parametrize("policy, message", [
    (lambda: policies.EveryNSteps(0), "n >= 1"),
    (lambda: policies.EveryNSeconds(0), "seconds > 0"),
    (lambda: policies.KeepLast(0), "k >= 1"),
    (lambda: policies.KeepBest(1, "loss", "down"), "'min' or 'max'"),
])
def test_bad_policy_arguments_are_rejected(policy, message):
  with pytest.raises(ValueError, match=message):
    policy()


def _candidates(losses, protected=()):
  return [policies.Candidate(id=i, step=(i + 1) * 10, metrics={"loss": loss},
                             protected=i in protected) for i, loss in enumerate(losses)]


def test_keep_last_keeps_the_newest_k():
  kept = policies.KeepLast(2).keep(_candidates([5, 4, 3, 2]))
  assert kept == {2, 3}


def test_keep_best_ranks_by_metric_in_either_direction():
  candidates = _candidates([0.5, 0.1, 0.9, 0.3])
  assert policies.KeepBest(2, "loss", "min").keep(candidates) == {1, 3}
  assert policies.KeepBest(1, "loss", "max").keep(candidates) == {2}
  assert policies.KeepBest(2, "accuracy").keep(candidates) == set()


def test_keep_every_n_steps_keeps_milestones():
  assert policies.KeepEveryNSteps(20).keep(_candidates([1, 1, 1, 1])) == {1, 3}


def test_to_prune_never_drops_protected_or_newest_checkpoints():
  candidates = _candidates([0.1, 0.5, 0.6, 0.7, 0.8], protected={0})
  doomed = policies.to_prune(policies.KeepAny((policies.KeepLast(1),)), candidates)
  assert [c.id for c in doomed] == [1, 2, 3]


def test_keep_any_unions_rules_and_keeps_all_without_rules():
  candidates = _candidates([0.1, 0.5, 0.6, 0.7, 0.8])
  union = policies.KeepAny((policies.KeepLast(1), policies.KeepBest(1, "loss")))
  assert union.keep(candidates) == {0, 4}
  assert policies.to_prune(policies.KeepAny(()), candidates) == []
