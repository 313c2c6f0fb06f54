import pytest

from service.config import ENV_NAMES, Settings, load_settings, settings_table
from service.errors import ConfigError


def test_defaults_and_environment():
    s = load_settings({"REDIS_URL": "redis://r:1/2", "OMNIREC_MAX_LIMIT": "50"})
    assert s.redis_url == "redis://r:1/2"
    assert s.max_limit == 50
    assert s.model_alias == Settings.model_alias


def test_overrides_beat_environment_and_none_falls_through():
    s = load_settings({"OMNIREC_PORT": "6000"}, port=None, model_alias="challenger")
    assert s.port == 6000 and s.model_alias == "challenger"
    assert load_settings({"OMNIREC_PORT": "6000"}, port=7000).port == 7000


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"OMNIREC_PORT": "abc"}, "OMNIREC_PORT"),
        ({"OMNIREC_PORT": "70000"}, "OMNIREC_PORT"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"OMNIREC_DEFAULT_LIMIT": "500"}, "OMNIREC_DEFAULT_LIMIT"),
        ({"OMNIREC_LOG_LEVEL": "LOUD"}, "OMNIREC_LOG_LEVEL"),
    ],
)
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(env)


def test_deployment_variable_names_are_kept():
    assert ENV_NAMES["redis_url"] == "REDIS_URL"
    assert ENV_NAMES["mlflow_tracking_uri"] == "MLFLOW_TRACKING_URI"


def test_settings_table_documents_every_setting():
    table = settings_table()
    for name in ENV_NAMES.values():
        assert f"`{name}`" in table
    assert "feature store" in table


def test_readme_documents_every_variable_with_its_default():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for field, name in ENV_NAMES.items():
        default = getattr(Settings, field)
        default = default if default != "" else "(none)"
        assert f"| `{name}` | `{default}` |" in readme, name
