"""``RunOptions`` from flat names: every part's field has a typed flat name, and back."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from rlm_host.api import RunOptionFields, RunOptions
from rlm_host.engine import Limits, Price
from rlm_host.isolation import GuestOptions, Isolation
from rlm_host.options import ModelOptions

#: Flat names whose type differs from the field's on purpose: they take what a caller has.
CONVERTED = {"isolation", "guest_command"}


def test_the_typed_names_are_exactly_the_names_of_and_replace_take() -> None:
    assert set(RunOptionFields.__annotations__) == RunOptions.names()


def test_each_typed_name_has_its_fields_type() -> None:
    fields = RunOptionFields.__annotations__.keys() - CONVERTED
    typed = typing.get_type_hints(RunOptionFields)
    parts = {**{part.__name__: part for part in (Limits, ModelOptions, GuestOptions)}, "RunOptions": RunOptions}
    for name in fields:
        owner = next(part for part in parts.values() if name in {f.name for f in dataclasses.fields(part)})
        assert typed[name] == typing.get_type_hints(owner)[name], name


def test_converted_names_reach_their_part() -> None:
    options = RunOptions.of(isolation="local", guest_command="node agent.js --x 1", prices={"m": Price(1.0, 2.0)})
    assert options.guest.isolation is Isolation.local
    assert options.guest.command == ("node", "agent.js", "--x", "1")
    assert dict(options.limits.prices) == {"m": Price(1.0, 2.0)}


def test_an_unknown_name_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no option 'max_step'"):
        RunOptions.of(max_step=3)  # type: ignore[call-arg]
