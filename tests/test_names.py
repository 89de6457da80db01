"""Names a user types: case and the characters -, _, + are ignored; unknown names get the closest ones."""

import subprocess
import sys

import pytest

from offline_rl import algos
from offline_rl.data.cards import get_card
from offline_rl.errors import ConfigError, UserError
from offline_rl.names import did_you_mean, find, name_key, resolve


@pytest.mark.parametrize("typed", ["td3_bc", "td3bc", "TD3+BC", "td3-bc", "TD3_BC", "Td3 Bc"])
def test_every_spelling_of_td3_bc_is_td3_bc(typed):
    assert algos.get(typed).name == "td3_bc"


def test_unknown_algorithm_names_the_closest():
    with pytest.raises(ConfigError, match=r"unknown algorithm 'td3_bcc'; did you mean 'td3_bc'"):
        algos.get("td3_bcc")
    with pytest.raises(ConfigError, match="available: a2pr, awm, bc"):
        algos.get("zzzzzz")


def test_card_and_sequence_method_lookups_normalise():
    assert get_card("Pendulum_Medium").name == "pendulum-medium"
    assert get_card("PENDULUM+MEDIUM+EXPERT").name == "pendulum-medium-expert"
    assert get_card("pendulum-mediumm") is None
    from offline_rl.seq import get_method
    from offline_rl.seq.methods import METHODS

    assert get_method("Dr-GRPO").description == get_method("dr_grpo").description
    with pytest.raises(UserError, match="did you mean 'grpo'"):
        METHODS.get("grpoo")


def test_the_key_and_ambiguity():
    assert name_key("TD3+BC") == name_key("td3_bc") == "td3bc"
    assert find("a_b", ["ab", "a-b"]) is None  # two registered names share the key: no guess
    assert find("a-b", ["ab", "a-b"]) == "a-b"  # the exact name still wins
    assert did_you_mean("qqqq", ["bc", "iql"]) == ""
    with pytest.raises(KeyError, match="unknown thing 'x'"):
        resolve("x", ["y"], "thing", KeyError)


def test_the_unknown_dataset_message_suggests_a_card(tmp_path):
    from offline_rl.data import load_dataset
    from offline_rl.errors import DatasetError

    with pytest.raises(DatasetError, match="did you mean 'pendulum-medium'"):
        load_dataset("pendulum-meduim")


def test_the_data_layer_loads_no_algorithm_or_training_code():
    code = ("import sys, offline_rl.data, offline_rl.data.generate, offline_rl.data.loader, offline_rl.zoo; "
            "bad = [m for m in sys.modules if m.startswith(('offline_rl.algos', 'offline_rl.training', "
            "'offline_rl.bench', 'offline_rl.cli'))]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
