import pytest

from tuner.search.config import DataConfig, StudyConfig, apply_override, check_data, from_dict, load_config
from tuner.errors import UserError

from conftest import ROOT


@pytest.mark.parametrize("name", ["digits-rare", "medical-imagefolder", "synthetic-smoke"])
def test_bundled_study_files_are_valid(name):
    cfg = load_config(ROOT / "studies" / f"{name}.toml")
    assert cfg.study.n_trials >= 1 and cfg.search.gamma[0] >= 0


def test_overrides_are_read_as_toml_values_else_strings():
    cfg = load_config(ROOT / "studies" / "digits-rare.toml",
                      ["train.epochs=2", "search.gamma=[0.5, 3.0]", "train.amp=true", "data.root=/x/y", "train.lr=1e-2"])
    assert cfg.train.epochs == 2 and cfg.search.gamma == (0.5, 3.0) and cfg.train.amp is True
    assert cfg.data.root == "/x/y" and cfg.train.lr == 0.01


def test_stored_dict_round_trips():
    cfg = load_config(ROOT / "studies" / "digits-rare.toml")
    assert from_dict(cfg.to_dict()) == cfg


def test_integer_is_accepted_where_a_number_is_expected():
    assert from_dict({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize("raw, words", [
    ({"train": {"epoch": 3}}, ["train.epoch", "unknown key"]),
    ({"trian": {}}, ["[trian]", "unknown section"]),
    ({"train": {"epochs": "3"}}, ["train.epochs", "integer"]),
    ({"train": {"amp": 1}}, ["train.amp", "true or false"]),
    ({"search": {"gamma": [-1.0, 2.0]}}, ["search.gamma", "0 <= low"]),
    ({"search": {"gamma": [3.0, 1.0]}}, ["search.gamma"]),
    ({"search": {"gamma": [1.0]}}, ["search.gamma", "range"]),
    ({"search": {"alpha": [0.1, 1.5]}}, ["search.alpha"]),
    ({"search": {"alpha": [-0.1, 0.5]}}, ["search.alpha"]),
    ({"study": {"metric": "accuracy"}}, ["study.metric", "average_precision"]),
    ({"study": {"n_trials": 0}}, ["study.n_trials"]),
    ({"study": {"sampler": "cmaes"}}, ["study.sampler"]),
    ({"study": {"final_model": "refit"}}, ["study.final_model", "ensemble or best_trial"]),
    ({"pruner": {"kind": "threshold"}}, ["pruner.kind"]),
    ({"train": {"device": "tpu"}}, ["train.device"]),
    ({"model": {"kind": "vit"}}, ["model.kind"]),
    ({"model": {"kind": "resnet"}, "train": {"fuse": 4}}, ["train.fuse = 4", "only with model.kind = simple_cnn"]),
    ({"data": {"kind": "mnist"}}, ["data.kind"]),
    ({"data": {"image_size": 2}}, ["data.image_size"]),
    ({"data": {"val_fraction": 1.5}}, ["data.val_fraction"]),
    # values that passed these checks and then broke every worker, or wasted the whole budget
    ({"study": {"seed": -1}}, ["study.seed = -1", "from 0 to 1000000"]),
    ({"study": {"seed": 99999999999}}, ["study.seed", "from 0 to 1000000"]),
    ({"train": {"lr": float("inf")}}, ["train.lr = inf", "finite"]),
    ({"train": {"weight_decay": float("inf")}}, ["train.weight_decay = inf", "finite"]),
    ({"search": {"gamma": [0.0, float("inf")]}}, ["search.gamma = [0.0, inf]", "finite"]),
    ({"study": {"heartbeat_interval": float("inf")}}, ["study.heartbeat_interval", "integer"]),
    ({"study": {"grid_points": 1000}}, ["study.grid_points = 1000", "from 1 to 316"]),
])
def test_invalid_values_name_their_key(raw, words):
    with pytest.raises(UserError) as e:
        from_dict(raw)
    for w in words:
        assert w in str(e.value)


def test_unknown_override_key_is_an_error_that_names_the_override_not_the_file():
    for item, words in (("train.epoch=3", "--set train.epoch=3: unknown key train.epoch; known keys of [train]: "),
                        ("trian.epochs=3", "--set trian.epochs=3: unknown section [trian]; known sections: ")):
        with pytest.raises(UserError) as e:
            load_config(ROOT / "studies" / "digits-rare.toml", [item])
        assert str(e.value).startswith(words) and "digits-rare.toml" not in str(e.value)


@pytest.mark.parametrize("text", ["[data]\n", "[data]\n[train]\n"])
def test_a_study_file_of_empty_sections_holds_no_settings(tmp_path, text):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(UserError, match="s.toml holds no settings"):
        load_config(tmp_path / "s.toml")


def test_malformed_override_says_the_form():
    with pytest.raises(UserError, match="SECTION.KEY=VALUE"):
        apply_override({}, "epochs")


def test_invalid_toml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study]\nname = \n")
    with pytest.raises(UserError, match=r"bad.toml is not valid TOML.*line 2"):
        load_config(bad)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_defaults_are_a_valid_config():
    assert from_dict({}) == StudyConfig()


@pytest.mark.parametrize(
    "field, value",
    [
        ("kind", "mnist"),
        ("image_size", 4),
        ("image_size", 2048),
        ("val_fraction", 0.0),
        ("val_fraction", 0.95),
        ("test_fraction", -0.1),
        ("rare_fraction", 0.0),
        ("rare_fraction", 0.6),
        ("rare_class", 10),
        ("n_samples", 10),
        ("max_bad_fraction", 1.5),
    ],
)
def test_bad_config_values(field, value):
    with pytest.raises(UserError, match=f"data.{field} = {value!r}"):
        check_data(DataConfig(**{"kind": "synthetic", field: value}))


def test_imagefolder_needs_root():
    with pytest.raises(UserError, match="data.root"):
        check_data(DataConfig(kind="imagefolder"))


def test_a_study_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    text = (ROOT / "studies" / "digits-rare.toml").read_text()
    (tmp_path / "bom.toml").write_text("\ufeff" + text, encoding="utf-8")
    assert load_config(tmp_path / "bom.toml") == load_config(ROOT / "studies" / "digits-rare.toml")


def test_a_range_the_alpha_mode_does_not_search_is_named():
    from tuner.search.config import unused_range

    many = from_dict({"search": {"alpha": [0.3, 0.4]}, "data": {"kind": "synthetic"}}).resolved(5, None, 10)
    assert unused_range(many) == ("search.alpha = [0.3, 0.4] is not searched: with class-balanced weights "
                                  "(search.alpha_mode) the search tunes search.beta = [0.9, 0.9999]")
    two = from_dict({"search": {"beta": [0.9, 0.99]}, "data": {"kind": "synthetic"}}).resolved(2, "rare", 10)
    assert "search.beta = [0.9, 0.99] is not searched" in unused_range(two)
    assert unused_range(from_dict({"data": {"kind": "synthetic"}}).resolved(5, None, 10)) is None  # the defaults: no word


def test_a_class_named_by_a_number_is_a_name():
    cfg = load_config(ROOT / "studies" / "digits-rare.toml", ["data.positive_class=9", "study.name=2024"])
    assert (cfg.data.positive_class, cfg.study.name) == ("9", "2024")
    assert load_config(ROOT / "studies" / "digits-rare.toml", ["data.folds=3"]).data.folds == 3  # "auto" keys stay numbers
    assert from_dict({"data": {"positive_class": 7}}).data.positive_class == "7"  # in the file, too


@pytest.mark.parametrize("text, words", [
    ("n_trials = 4\n[study]\nname = 'x'\n", ["n_trials in", "comes before any [section] line (study.n_trials is the key of that name)"]),
    ("[train]\nfolds = 5\n", ["unknown key train.folds", "(data.folds is the key of that name)"]),
    ("[study]\npruner = 'none'\n", ["unknown key study.pruner", "([pruner] is a section of its own)"]),
    ("[data]\nn_startup_trials = 2\n", ["(study.n_startup_trials and pruner.n_startup_trials are the keys of that name)"]),
])
def test_a_key_in_the_wrong_place_says_where_it_belongs(tmp_path, text, words):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(UserError) as e:
        load_config(tmp_path / "s.toml")
    assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(UserError, match=r"--set train.folds=3: unknown key train.folds \(data.folds is the key of that name\)"):
        load_config(ROOT / "studies" / "digits-rare.toml", ["train.folds=3"])


def test_settings_the_chosen_pruner_sampler_or_optimizer_does_not_use_are_named():
    from tuner.search.config import unused_settings

    given = from_dict({"pruner": {"kind": "hyperband", "n_warmup_steps": 3, "n_startup_trials": 10},
                       "study": {"grid_points": 9, "sampler": "random", "n_startup_trials": 2}, "train": {"optimizer": "adamw"}})
    assert unused_settings(given, set()) == [
        "pruner.n_startup_trials = 10 is not used by pruner.kind = 'hyperband'",
        "pruner.n_warmup_steps = 3 is not used by pruner.kind = 'hyperband'",
        "study.grid_points = 9 is not used by study.sampler = 'random'",
        "study.n_startup_trials = 2 is not used by study.sampler = 'random' (it is TPE's)",
        'train.optimizer = "adamw" with train.weight_decay = 0 is Adam: set train.weight_decay, e.g. --set '
        "train.weight_decay=0.01 (torch's AdamW default)"]
    resolved = from_dict({}).resolved(2, "rare", 30)  # "auto" made a number: not the user's setting
    assert unused_settings(resolved, from_dict({}).derived()) == []
    assert unused_settings(from_dict({"train": {"optimizer": "adamw", "weight_decay": 0.01}}), set()) == []
