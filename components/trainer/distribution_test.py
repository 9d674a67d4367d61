"""What the Trainer checks of a model module before distributed training
(no strategy needed)."""

from __future__ import annotations

import pytest
import tensorflow as tf

from ckptflow.components.trainer.distribution import check_variables, task_of


def test_an_extra_variable_without_aggregation_is_refused_by_name():
  with pytest.raises(ValueError, match=r"TrainingSetup.variables\['total'\] has aggregation "
                     "NONE: under a distribution strategy its replicas' copies diverge"):
    check_variables({"ok": tf.Variable(0.0, aggregation=tf.VariableAggregation.MEAN),
                     "total": tf.Variable(0.0)})


@pytest.mark.parametrize("config, expected", [
    ('{"cluster": {"worker": ["h:1", "h:2", "h:3"]}, "task": {"type": "worker", "index": 2}}',
     (2, 3)),
    ('{"cluster": {"chief": ["c:1"], "worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
     (0, 2)),
    ('{"cluster": {"chief": ["c:1"], "worker": ["h:1"]}, "task": {"type": "worker", "index": 0}}',
     (1, 2)),
])
def test_a_workers_index_and_count_come_from_tf_config(config, expected):
  assert task_of(config) == expected
