"""Base-model registry: ids only, families, defaults that exist in the scheduler registry."""
import pytest

from pipelines import models
from pipelines.schedulers import scheduler_names


def test_registry_entries_are_consistent():
    assert {"tiny-shapes", "sd15", "sd21-base"} <= set(models.model_names())
    for name in models.model_names():
        spec = models.model_spec(name)
        assert spec.family in models.FAMILIES
        assert spec.default_scheduler in scheduler_names()
        assert spec.resolution % 8 == 0 and 1 <= spec.default_steps <= 100
    assert models.model_family("sd15") == "sd15" and models.model_family("sd21-base") == "sd2"
    assert models.model_spec("tiny-shapes").local and models.model_source("tiny-shapes").endswith("models/tiny-shapes")


@pytest.mark.parametrize("bad", ["/etc", "models/tiny-shapes", "stable-diffusion-v1-5/stable-diffusion-v1-5", ""])
def test_load_pipeline_refuses_anything_but_registry_ids(bad):
    with pytest.raises(ValueError, match="not a registered model.*'tiny-shapes'"):
        models.load_pipeline(bad)
