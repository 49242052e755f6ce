"""Running `textinv demo` again replaces its own earlier run without naming a flag the user never passed."""

from __future__ import annotations

import logging

from textinv.toy import demo


def test_a_second_demo_run_says_it_replaces_the_first_in_its_own_words(sd1_model, tmp_path, caplog):
    kwargs = dict(
        num_images=1,
        model=str(sd1_model),
        train_overrides={"max_train_steps": 1, "resolution": 32, "train_batch_size": 1, "report_to": "none"},
        sample_overrides={"num_inference_steps": 1},
    )
    demo.run_demo("orange star", tmp_path / "demo", **kwargs)
    messages = []
    with caplog.at_level(logging.INFO):
        result = demo.run_demo("orange star", tmp_path / "demo", report=messages.append, **kwargs)
    assert result["steps"] == 1
    assert "--overwrite_output_dir" not in caplog.text
    assert f"demo: replacing the earlier demo run in {tmp_path / 'demo'}" in messages
