"""A run that fails without an error says so: a collapse to predicting zero and a rising loss get one
warning line each, with the likely cause; a slow learner and a noisy loss get none."""

import logging

from conftest import make_trainer

from diffctl.health import LossWatch


def _warnings(watch, losses, every=50):
    return [(step, w) for step, w in ((every * (i + 1), watch(every * (i + 1), loss)) for i, loss in enumerate(losses)) if w]


def test_a_collapse_to_zero_prediction_is_flagged_once_after_warm_up():
    # the H200 run of unet_base at lr 2e-3 (issue 16): 0.50, then 1.006, 1.0000, 1.0000
    said = _warnings(LossWatch(zero_loss=1.0, after=100), [0.50, 0.27, 1.006, 1.0, 1.0, 0.999, 1.0])
    assert [step for step, _ in said] == [200]  # two log lines at the zero-prediction loss after step 100, said once
    assert "collapsed to predicting zero" in said[0][1] and "1.006" not in said[0][1]


def test_a_slow_learner_near_the_zero_loss_and_a_noisy_loss_are_not_flagged():
    # the mlp on swiss_roll (v-prediction): its loss starts at the zero-prediction level and creeps down
    assert not _warnings(LossWatch(zero_loss=1.46, after=100), [1.50, 1.46, 1.445, 1.443, 1.423, 1.40, 1.36])
    # noise around a plateau: ups and downs, and three small rises in a row
    assert not _warnings(LossWatch(zero_loss=1.0, after=100), [0.3, 0.2, 0.21, 0.19, 0.2, 0.205, 0.21, 0.215, 0.18])
    # before the end of the warm-up nothing is said, even at the zero loss
    assert not _warnings(LossWatch(zero_loss=1.0, after=1000), [0.3, 1.0, 1.0, 1.0])


def test_a_rising_loss_is_flagged_as_divergence():
    said = _warnings(LossWatch(zero_loss=1.0, after=100), [0.4, 0.2, 0.2, 0.22, 0.25, 0.3, 0.31, 0.32, 0.4])
    assert [step for step, _ in said] == [300]  # 0.2 -> 0.22 -> 0.25 -> 0.3: three rises, +50%
    assert "rose at 3 log lines in a row, from 0.2 to 0.3" in said[0][1]


def test_the_trainer_warns_of_a_collapse_with_the_likely_cause(tmp_path, caplog):
    trainer = make_trainer(tmp_path, "trainer.steps=160", "trainer.log_every=20", "optim.warmup_steps=20", "trainer.ckpt_every=0",
                           "trainer.eval_every=0")
    real = trainer.preconditioned.net
    # from step 100 on the network's output is multiplied by zero: what a collapsed network outputs
    trainer.preconditioned.net = lambda x, t, *c: real(x, t, *c) * (0.0 if trainer.step >= 100 else 1.0)
    with caplog.at_level(logging.WARNING, logger="diffctl.train"):
        trainer.fit()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("step 140: the loss went back up to"), warnings
    assert "Likely cause: optim.lr=0.002 is too high for this 0.18M-parameter network; start again with optim.lr=0.0002" in warnings[0]
