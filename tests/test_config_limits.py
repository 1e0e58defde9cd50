"""Bounds on reading a config (dnsd.config.yamlnodes.Limits): a file too large, too many nodes, aliases
that expand too far, nesting too deep, an alias loop, bytes that are not UTF-8 — each refused at the
first place past the bound with file:line:col and key path, quickly and in bounded memory; anchors
within the bounds keep working. (The small bad files are fixtures in tests/config/bad/; the big ones
are generated here.)"""
from __future__ import annotations

import copy
import json
import time
import tracemalloc

import pytest
import yaml

from dnsd.config import ConfigError, load_config, parse_config_text
from dnsd.config.yamlnodes import LIMITS, Limits, parse_yaml
from tests.dnstest import ROOT, example_dict

BAD = ROOT / "tests" / "config" / "bad"


def problems_of(call) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        call()
    return [str(problem) for problem in caught.value.problems]


# -- the default bounds, on generated files too big to commit -------------------------------------

def too_large() -> bytes:
    padding = b"# " + b"x" * 1021 + b"\n"  # 1 KiB comment lines
    return (yaml.safe_dump(example_dict()).encode() + padding * (16 * 1024))[:LIMITS.max_bytes + 1]


def too_many_nodes() -> bytes:
    return ("[" + ", ".join(["0"] * (LIMITS.max_nodes + 1)) + "]\n").encode()


def too_many_through_aliases() -> bytes:
    # 200,000 written nodes may be joined by 4x as many through aliases, but the total passes 1,000,000
    return ("a: &a [" + ", ".join(["0"] * 200_000) + "]\nb: [" + ", ".join(["*a"] * 5) + "]\n").encode()


def not_utf8() -> bytes:
    return b"zone:\n  name: caf\xe9.test\n"


GENERATED = [
    # (file named after its defect, content, expected problem after "<file>:")
    ("file-too-large", too_large,
     "1:1: file too large: more than 16,777,216 bytes (the limit for a config file is 16 MiB)"),
    ("too-many-nodes", too_many_nodes,
     "1:2999999: [999999]: too many nodes: more than 1,000,000 (values, lists and mappings, aliases expanded)"),
    ("too-many-nodes-through-aliases", too_many_through_aliases,
     "2:17: b[3]: too many nodes: alias *a brings the total to 1,000,009, more than 1,000,000 (values, lists "
     "and mappings, aliases expanded)"),
    ("not-utf8", not_utf8, "2:12: not UTF-8: byte 0xe9 cannot start or continue a character"),
]


@pytest.mark.parametrize("name,content,expected", [  # a million nodes takes seconds to parse: slow
    pytest.param(*case, id=case[0], marks=pytest.mark.slow if case[0] == "too-many-nodes" else ())
    for case in GENERATED])
def test_generated_bad_file_is_refused_with_file_line(tmp_path, name, content, expected):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content())
    assert problems_of(lambda: load_config(path)) == [f"{path}:{expected}"]


def test_too_large_text_is_refused_before_parsing():
    text = "#" * (LIMITS.max_bytes + 1)
    assert problems_of(lambda: parse_config_text(text, "api.yaml")) == [
        "api.yaml:1:1: file too large: more than 16,777,216 bytes (the limit for a config file is 16 MiB)"]


# -- the bounds' arithmetic, on small limits ------------------------------------------------------

SMALL = Limits(max_bytes=10_000, max_nodes=60, alias_factor=2, alias_floor=10, max_depth=4)
FLOOR = Limits(max_bytes=10_000, max_nodes=60, alias_factor=0, alias_floor=10, max_depth=4)

BOUND_CASES = [
    # (case, limits, YAML text, expected problem or None when it must load). Nodes count from the root
    # mapping: "a: &a [1, 2]" is 5 written nodes (root, key, list, two items), and an alias of a list
    # of four items adds 4 (it stands for 5 nodes, one of them written).
    ("aliases-within-the-floor", FLOOR, "a: &a [1, 2, 3, 4]\nb: [*a, *a]\n", None),
    ("aliases-past-the-floor", FLOOR, "a: &a [1, 2, 3, 4]\nb: [*a, *a, *a]\n",
     "t.yaml:2:13: b[2]: alias *a expands to 5 nodes: aliases would add 12 nodes by here, more than the 10 "
     "allowed (the larger of 10 and 0 times the 12 nodes written so far)"),
    # 13 nodes written before b's aliases, each adding 8: the 4th brings 32 <= 2 x 17, the 5th 40 > 2 x 18
    ("aliases-within-the-factor", SMALL, "a: &a [1, 2, 3, 4, 5, 6, 7, 8]\nb: [*a, *a, *a, *a]\n", None),
    ("aliases-past-the-factor", SMALL, "a: &a [1, 2, 3, 4, 5, 6, 7, 8]\nb: [*a, *a, *a, *a, *a]\n",
     "t.yaml:2:21: b[4]: alias *a expands to 9 nodes: aliases would add 40 nodes by here, more than the 36 "
     "allowed (the larger of 10 and 2 times the 18 nodes written so far)"),
    ("nested-aliases-multiply", SMALL, "a: &a [1, 1, 1]\nb: &b [*a, *a, *a]\nc: [*b, *b]\n",
     "t.yaml:3:9: c[1]: alias *b expands to 13 nodes: aliases would add 33 nodes by here, more than the 30 "
     "allowed (the larger of 10 and 2 times the 15 nodes written so far)"),
    ("written-nodes-past-the-total", SMALL, "[" + ", ".join(["0"] * 60) + "]\n",
     "t.yaml:1:179: [59]: too many nodes: more than 60 (values, lists and mappings, aliases expanded)"),
    ("exactly-the-total", SMALL, "[" + ", ".join(["0"] * 59) + "]\n", None),
    ("aliases-past-the-total", SMALL, "a: &a [" + ", ".join(["0"] * 20) + "]\nb: [*a, *a]\n",
     "t.yaml:2:9: b[1]: too many nodes: alias *a brings the total to 67, more than 60 (values, lists and "
     "mappings, aliases expanded)"),
    ("depth-at-the-bound", SMALL, "a: {b: {c: [1]}}\n", None),
    ("depth-past-the-bound", SMALL, "a: {b: {c: [[1]]}}\n",
     "t.yaml:1:13: a.b.c[0]: nested more than 4 levels deep (aliases expanded)"),
    ("depth-through-an-alias", SMALL, "x: &x [[[1]]]\na: {b: *x}\n",
     "t.yaml:2:8: a.b: nested more than 4 levels deep (aliases expanded)"),
    ("alias-loop", SMALL, "a: &a {b: [*a]}\n",
     "t.yaml:1:12: a.b[0]: alias *a is used inside the node it names (a loop)"),
    ("undefined-alias", SMALL, "a: *nope\n", "t.yaml:1:4: YAML syntax: found undefined alias 'nope'"),
    ("two-documents", SMALL, "a: 1\n---\nb: 2\n",
     "t.yaml:2:1: YAML syntax: expected a single document in the stream (from line 1:1): but found another "
     "document"),
]


@pytest.mark.parametrize("limits,text,expected", [case[1:] for case in BOUND_CASES],
                         ids=[case[0] for case in BOUND_CASES])
def test_bounds(limits, text, expected):
    if expected is None:
        assert parse_yaml(text, "t.yaml", limits) is not None
    else:
        assert problems_of(lambda: parse_yaml(text, "t.yaml", limits)) == [expected]


# -- the attack: fast, small, and legitimate anchors unaffected -----------------------------------

def test_alias_bomb_is_refused_quickly_in_little_memory():
    """The 9^7 bomb used to take 25-38 s and 1.4 GB; now the first alias past the bound stops it."""
    cpu = time.process_time()
    tracemalloc.start()
    try:
        problems = problems_of(lambda: load_config(BAD / "alias-bomb.yaml"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    cpu = time.process_time() - cpu
    assert len(problems) == 1 and "alias *d expands to 7,381 nodes" in problems[0]
    assert peak < 5 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"


def test_anchors_within_the_bounds_load_like_their_expansion():
    data = example_dict()
    shared = copy.deepcopy(data["registries"]["contoso"]["replicas"]["eastus"]["probe"])
    for replica in data["registries"]["contoso"]["replicas"].values():
        replica["probe"] = shared  # one object: safe_dump writes an anchor and aliases
    text = yaml.safe_dump(data, sort_keys=False)
    assert "&id001" in text and text.count("*id001") == 2
    expanded = yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False)  # no shared objects
    assert "*id001" not in expanded
    with_aliases, without = parse_config_text(text, "a.yaml"), parse_config_text(expanded, "a.yaml")
    assert with_aliases.registries == without.registries


@pytest.mark.slow
def test_a_thousand_registry_config_is_well_within_the_bounds():
    import sys
    sys.path.insert(0, str(ROOT / "bench"))
    from rebuild import config_text
    text = config_text(1000)
    assert len(text.encode()) < LIMITS.max_bytes / 20
    config = parse_config_text(text, "big.yaml")
    assert len(config.registries) == 1000
