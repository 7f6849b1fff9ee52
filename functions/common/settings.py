"""Environment settings of the functions as models, read once per process."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """What every function reads (the CDK stack sets exactly these variables)."""

    model_config = SettingsConfigDict(case_sensitive=False, frozen=True, extra="ignore")
    data_bucket: str = Field(min_length=3)
    state_table: str = Field(min_length=3)
    kms_key_arn: str = Field(min_length=20)
    # JSON {site: queue_url}; a site absent here cannot be told about its results.
    site_results_queues: dict[str, str] = Field(default_factory=dict)
    powertools_service_name: str = "imaging-ai"


class PreprocessSettings(CommonSettings):
    # JSON {model name: async endpoint name}: each model has its own endpoint; a run whose
    # model is absent here is refused (FAILED), the others go on.
    model_endpoints: dict[str, str] = Field(default_factory=dict)
    # JSON {model name: its STAT endpoint's name}, for the models that have one: a STAT run
    # goes there, not behind the routine endpoint's queue (docs/priority.md).
    stat_model_endpoints: dict[str, str] = Field(default_factory=dict)


class DriftSettings(CommonSettings):
    # The recent window compared with the validation baseline (imaging_ai.drift).
    drift_window_days: float = Field(default=7.0, gt=0)
