"""A tracking store's password (``track.uri: https://user:password@host``) is used to connect, never shown or shipped:
not an MLflow parameter, not in the report's sentence, not in a bundle's config."""

from __future__ import annotations

import json

import pytest

from seg_toolkit.bundle_check import offline_config
from seg_toolkit.track import redact_uri, tracker_sentence


@pytest.mark.parametrize("uri, shown", [
    ("https://alice:s3cr3t@mlflow.example.com:5000/x", "https://alice:***@mlflow.example.com:5000/x"),
    ("http://mlflow.example.com:5000", "http://mlflow.example.com:5000"),  # a port is no password
    ("https://alice@host/x", "https://alice@host/x"),
    ("sqlite:////tmp/runs/mlflow.db", "sqlite:////tmp/runs/mlflow.db"),
    ("databricks://profile:prefix", "databricks://profile:prefix"),
    (None, None),
])
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown


def test_the_report_sentence_and_a_bundled_config_hold_no_password(tmp_path):
    (tmp_path / "tracker.json").write_text(json.dumps({"backend": "mlflow", "run_id": "r1", "experiment_id": "1",
                                                       "uri": "https://alice:s3cr3t@host/x"}))
    sentence, _ = tracker_sentence(tmp_path)
    assert "s3cr3t" not in sentence and "https://alice:***@host/x" in sentence
    shipped = offline_config({"track": {"backend": "mlflow", "uri": "https://alice:s3cr3t@host/x"}, "model": {}})
    assert shipped["track"] == {"backend": "none", "uri": None}
