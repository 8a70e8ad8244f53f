"""Spec errors name file, line and key path; nothing about them needs a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import loader
from orchestrator.errors import SpecError
from tests.conftest import REPO


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        loader.load(path)
    return str(info.value)


def test_unknown_key_names_file_line_and_path(write_spec):
    path = write_spec("""
        name: p
        stages:
          - name: a
            kind: command
            run: echo
            resources:
              nodess: 2
    """)
    msg = error_of(path)
    assert f"{path}:7: stages[0].resources.nodess: unknown key" in msg


def test_wrong_type_and_zero_nodes(write_spec):
    path = write_spec("""
        name: p
        stages:
          - name: a
            kind: command
            run: echo
            resources: {nodes: 0}
    """)
    assert f"{path}:6: stages[0].resources.nodes:" in error_of(path)


def test_yaml_syntax_error_has_line(write_spec):
    path = write_spec("name: p\nstages:\n  - name: [a\n")
    assert f"{path}:4: YAML syntax error" in error_of(path) or f"{path}:3: YAML syntax error" in error_of(path)


def test_cycle_is_rejected(write_spec):
    path = write_spec("""
        name: p
        stages:
          - {name: a, kind: command, run: echo, after: [b]}
          - {name: b, kind: command, run: echo, after: [a]}
    """)
    msg = error_of(path)
    assert "dependency cycle" in msg and "a -> b -> a" in msg or "b -> a -> b" in msg


def test_unknown_after_and_duplicate_names(write_spec):
    path = write_spec("""
        name: p
        stages:
          - {name: a, kind: command, run: echo}
          - {name: b, kind: command, run: echo, after: [zz]}
    """)
    assert f"{path}:4: stages[1].after[0]: unknown stage 'zz'" in error_of(path)
    dup = write_spec("""
        name: p
        stages:
          - {name: a, kind: command, run: echo}
          - {name: a, kind: command, run: echo}
    """, "dup.yaml")
    assert "duplicate stage name 'a'" in error_of(dup)


def test_duplicate_yaml_key_is_an_error(write_spec):
    path = write_spec("""
        name: p
        name: q
        stages: [{name: a, kind: command, run: echo}]
    """)
    assert f"{path}:2: name: duplicate key" in error_of(path)


def test_unknown_cluster_and_family_and_kind(write_spec):
    assert "unknown cluster 'nowhere'" in error_of(write_spec("""
        name: p
        cluster: nowhere
        stages: [{name: a, kind: command, run: echo}]
    """))
    assert "has no stage kind 'bake'" in error_of(write_spec("""
        name: p
        stages: [{name: a, kind: bake}]
    """, "k.yaml"))


def test_stage_names_cannot_escape_run_dir(write_spec):
    path = write_spec("""
        name: p
        stages: [{name: ../evil, kind: command, run: echo}]
    """)
    assert "stages[0].name" in error_of(path)


def test_files_that_are_not_specs(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert "is empty" in error_of(empty)
    assert "is a directory" in error_of(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x00\x01\x02")
    assert "binary" in error_of(binary)
    assert "no such file" in error_of(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("#" * 2_000_000)
    assert "too large" in error_of(big)


def test_neuron_compile_and_finetune_must_share_node_count(write_spec):
    path = write_spec("""
        name: p
        family: neuron
        venv: /tmp/venv
        cluster: local
        stages:
          - {name: compile, kind: compile, resources: {nodes: 1}}
          - {name: finetune, kind: finetune, resources: {nodes: 2}}
    """)
    assert "stages[0].resources.nodes: compile runs on 1 node(s) but finetune on 2" in error_of(path)


def test_settings_errors_are_located(write_spec):
    path = write_spec("""
        name: p
        family: neuron
        venv: /v
        settings:
          procs_per_node: 30
          tensor_parallel_size: 8
        stages: [{name: f, kind: finetune}]
    """)
    assert f"{path}:4: settings:" in error_of(path) and "not a multiple" in error_of(path)


def test_command_param_keys_must_be_identifiers(write_spec):
    path = write_spec("""
        name: p
        stages: [{name: a, kind: command, run: echo, params: {"x; rm -rf /": 1}}]
    """)
    assert "not a valid variable name" in error_of(path)


def test_examples_validate():
    for example in sorted((REPO / "examples").glob("*.yaml")):
        loaded = loader.load(example)
        assert loaded.pipeline.stages, example


def test_after_defaults_to_previous_stage(write_spec):
    loaded = loader.load(write_spec("""
        name: p
        stages:
          - {name: a, kind: command, run: echo}
          - {name: b, kind: command, run: echo}
          - {name: c, kind: command, run: echo, after: []}
    """))
    assert loaded.parents() == {"a": [], "b": ["a"], "c": []}
