"""What the correlation study needs from training and evaluation: training without augmentation
(an axis of the zoo) and the train split evaluated, for the generalization gap."""
from __future__ import annotations

import pytest

from ensembles.studies import evaluation, sweep
from ensembles.training import trainer
from landscape.errors import InputError


def test_the_train_split_is_evaluated_only_when_asked_and_without_augmentation():
    default = evaluation.evaluation_slices("digits", corruptions="none")
    assert [s.split for s in default] == ["val", "test"]
    chosen = evaluation.evaluation_slices("digits", corruptions="none", splits="train,val,test")
    assert [s.split for s in chosen] == ["train", "val", "test"]
    assert chosen[0].load().augment is False
    with pytest.raises(InputError, match="--splits"):
        evaluation.evaluation_slices("digits", corruptions="none", splits="train,holdout")


def test_augmentation_is_a_setting_recorded_for_the_run_and_a_sweep_axis():
    # one setting, `augmentation` (none | crop | crop-flip); digits' default is none
    settings = trainer.TrainingSettings(dataset="digits", model="small_cnn", augmentation="none")
    assert settings.run_fields()["augmentation"] == "none"
    assert trainer._load_data(settings).train.augment is False
    flipped = trainer.TrainingSettings(dataset="digits", model="small_cnn", augmentation="crop-flip")
    assert trainer._load_data(flipped).train.augment is True
    with pytest.raises(InputError, match="augmentation"):
        trainer.TrainingSettings(dataset="digits", model="small_cnn", augmentation="no")
    parsed = sweep.parse_sweep('[base]\ndataset = "digits"\nmodel = "small_cnn"\nseeds = [13]\n'
                               '[grid]\naugmentation = ["crop-flip", "none"]\n')
    assert [job.name for job in parsed.jobs] == ["sgd-crop_flip-s13", "sgd-none-s13"]
    assert [job.settings.augmentation for job in parsed.jobs] == ["crop-flip", "none"]
