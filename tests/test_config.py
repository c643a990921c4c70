import argparse

import pytest
import yaml

from icm.cli import fraction
from icm.config import ConfigError, load_yaml, parse_args_with_config, save_run_config


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--epsilon", type=fraction, default=8 / 255)
    p.add_argument("--meta_steps", type=int, default=10)
    p.add_argument("--direction", choices=["helpful", "harmful"], default="helpful")
    p.add_argument("--weights", action="append", default=[])
    return p


def test_defaults_without_config():
    args = parse_args_with_config(_parser(), [], "meta_aafg")
    assert args.epsilon == pytest.approx(8 / 255) and args.meta_steps == 10


def test_config_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("meta_steps: 3\nmeta_aafg:\n  epsilon: 4/255\n  direction: harmful\n")
    args = parse_args_with_config(_parser(), ["--config", str(cfg)], "meta_aafg")
    assert args.meta_steps == 3 and args.epsilon == pytest.approx(4 / 255)
    assert args.direction == "harmful"
    args = parse_args_with_config(_parser(), ["--config", str(cfg), "--meta_steps", "7"], "meta_aafg")
    assert args.meta_steps == 7


def test_section_of_another_cli_is_ignored_and_own_section_wins(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("meta_steps: 3\ncompression:\n  lr: 0.1\nmeta_aafg:\n  meta_steps: 5\n")
    args = parse_args_with_config(_parser(), ["--config", str(cfg)], "meta_aafg")
    assert args.meta_steps == 5


def test_unknown_key_in_section_is_an_error_naming_file_and_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("meta_aafg:\n  meta_stepz: 5\n")
    with pytest.raises(ConfigError, match="c.yaml: unknown key 'meta_stepz'"):
        parse_args_with_config(_parser(), ["--config", str(cfg)], "meta_aafg")


def test_unknown_top_level_key_warns(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 4\n")
    with pytest.warns(UserWarning, match="'batch_size' is not an option"):
        parse_args_with_config(_parser(), ["--config", str(cfg)], "meta_aafg")


def test_bad_values_and_choices_are_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("meta_aafg:\n  direction: sideways\n")
    with pytest.raises(ConfigError, match="direction='sideways' is not one of"):
        parse_args_with_config(_parser(), ["--config", str(cfg)], "meta_aafg")
    cfg.write_text("meta_aafg:\n  epsilon: eight\n")
    with pytest.raises(ConfigError, match="epsilon: bad value"):
        parse_args_with_config(_parser(), ["--config", str(cfg)], "meta_aafg")
    # Checked before any work, as the command line would: floats, booleans and lists for an int.
    for bad, message in (("2.7", "2.7 is not an integer"), ("true", "True is a boolean"), ("[1, 2]", "not a single value")):
        cfg.write_text(f"meta_aafg:\n  meta_steps: {bad}\n")
        with pytest.raises(ConfigError, match=f"meta_steps: bad value .*{message}"):
            parse_args_with_config(_parser(), ["--config", str(cfg)], "meta_aafg")
    cfg.write_text("meta_aafg:\n  meta_steps: 4\n  epsilon: 0.05\n")
    args = parse_args_with_config(_parser(), ["--config", str(cfg)], "meta_aafg")
    assert args.meta_steps == 4 and args.epsilon == 0.05


def test_validating_types_check_yaml_numbers_as_the_command_line_would(tmp_path):
    from icm.cli import limit, positive_int, positive_number

    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--batch_size", type=positive_int, default=1)
    p.add_argument("--limit", type=limit, default=None)
    p.add_argument("--lr", type=positive_number, default=1e-4)
    cfg = tmp_path / "c.yaml"
    for bad, message in (("batch_size: 2.7", "not an integer: '2.7'"), ("batch_size: 0", "0: give at least 1"),
                         ("limit: -3", "-3: give at least 1"), ("lr: 0", "0: give a number above 0"),
                         ("lr: -1.0e-4", "give a number above 0"), ("batch_size: true", "True is a boolean")):
        cfg.write_text(f"stage:\n  {bad}\n")
        with pytest.raises(ConfigError, match=f"bad value .*{message}"):
            parse_args_with_config(p, ["--config", str(cfg)], "stage")
    cfg.write_text("stage:\n  batch_size: 4\n  limit: all\n  lr: 3.0e-4\n")
    args = parse_args_with_config(p, ["--config", str(cfg)], "stage")
    assert (args.batch_size, args.limit, args.lr) == (4, None, pytest.approx(3e-4))


def test_list_flags_accept_scalars_and_typed_items(tmp_path):
    from icm.cli import key_value

    cfg = tmp_path / "c.yaml"
    cfg.write_text("meta_aafg:\n  weights: a=1.pt\n")
    assert parse_args_with_config(_parser(), ["--config", str(cfg)], "meta_aafg").weights == ["a=1.pt"]
    p = _parser()
    p.add_argument("--typed", type=key_value, action="append")
    p.add_argument("--eps", type=fraction, nargs="+")
    cfg.write_text("meta_aafg:\n  typed: [a=1.pt, b=2.pt]\n  eps: [1/255, 0.5]\n")
    args = parse_args_with_config(p, ["--config", str(cfg)], "meta_aafg")
    assert args.typed == [("a", "1.pt"), ("b", "2.pt")]
    cfg.write_text("meta_aafg:\n  typed: {a: 1.pt, b: 2.pt}\n")
    args = parse_args_with_config(p, ["--config", str(cfg), "--typed", "c=3.pt"], "meta_aafg")
    assert args.typed == [("a", "1.pt"), ("b", "2.pt"), ("c", "3.pt")]
    assert args.eps == [pytest.approx(1 / 255), 0.5]


def test_malformed_and_missing_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: malformed YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="not-there.yaml: config file not found"):
        load_yaml(tmp_path / "not-there.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_save_run_config_writes_resolved_config_and_environment(tmp_path):
    args = argparse.Namespace(epsilon=0.5, save_path=tmp_path, models=("a", "b"))
    save_run_config(tmp_path / "run", args, device="cpu")
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg == {"epsilon": 0.5, "save_path": str(tmp_path), "models": ["a", "b"]}
    env = yaml.safe_load((tmp_path / "run" / "environment.yaml").read_text())
    assert env["device"] == "cpu" and env["torch"]


def test_dataset_toy_alone_reads_the_toy_config(tmp_path, monkeypatch):
    import icm.config

    toy = tmp_path / "toy.yaml"
    toy.write_text("meta_aafg:\n  meta_steps: 2\n")
    monkeypatch.setattr(icm.config, "TOY_CONFIG", toy)

    def parse(argv):
        p = _parser()
        p.add_argument("--dataset", default="voc")
        return parse_args_with_config(p, argv, "meta_aafg")

    assert parse(["--dataset", "TOY"]).meta_steps == 2
    assert parse(["--dataset", "voc"]).meta_steps == 10
    assert parse(["--dataset", "toy", "--meta_steps", "4"]).meta_steps == 4


def test_a_config_key_may_be_any_long_name_of_a_flag(tmp_path):
    p = _parser()
    p.add_argument("--out", "--save_dir", dest="save_dir", default="x")
    for key in ("out", "save_dir"):
        config = tmp_path / f"{key}.yaml"
        config.write_text(f"stage:\n  {key}: runs/a\n")
        assert parse_args_with_config(p, ["--config", str(config)], "stage").save_dir == "runs/a"
        assert parse_args_with_config(p, ["--config", str(config), "--out", "b"], "stage").save_dir == "b"
    config = tmp_path / "bad.yaml"
    config.write_text("stage:\n  outt: runs/a\n")
    with pytest.raises(ConfigError, match="outt"):
        parse_args_with_config(p, ["--config", str(config)], "stage")
