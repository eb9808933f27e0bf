"""Capability data: provenance rules, JSON conversion, the committed schemas."""

import json

import jsonschema
import pytest

from hal.capability import Capabilities, Figure, OpSupport, Paradigm, load_schema, validate
from hal.capability.schema import SCHEMA_NAMES


def _caps(**sections):
    return Capabilities(
        uri="x:0",
        kind="x",
        paradigm=Paradigm.ANALOG,
        simulated=True,
        identity={"model": "test"},
        ops={"linear": OpSupport(("float32",), {"float32": 0.05}, {"max_in_features": 1024})},
        memory_bytes=Figure.derived(1024.0, "B", "tiles * tile_rows * tile_cols * bytes_per_cell"),
        sections=sections,
    )


def test_figure_sources_must_say_where_they_come_from():
    Figure.measured(1.0, "W")
    Figure.datasheet(80e9, "B", "NVIDIA H100 datasheet")
    with pytest.raises(ValueError, match="must start with"):
        Figure(1.0, "W", "trust me")
    with pytest.raises(ValueError, match="which formula"):
        Figure(1.0, "W", "derived:")


def test_capabilities_to_dict_validates():
    doc = _caps(analog={"tile_rows": 256, "g_max": Figure.paper(25.0, "uS", "Nandakumar et al. 2019"), "levels": [1, 2]}).to_dict()
    validate(doc)
    assert json.loads(json.dumps(doc)) == doc


def test_section_figure_without_source_is_rejected():
    doc = _caps().to_dict()
    doc["sections"] = {"analog": {"g_max": {"value": 25.0, "unit": "uS"}}}
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_third_party_paradigm_and_section_are_accepted():
    """A driver outside hal may name its own paradigm and section; the schema fixes their form, not a closed list."""
    doc = _caps(memcomputing={"cells": 4096}).to_dict()
    doc["paradigm"] = "memcomputing"
    validate(doc)


@pytest.mark.parametrize(("field", "value"), [("paradigm", "Not A Name"), ("paradigm", ""), ("sections", {"Bad Section": {}})])
def test_malformed_paradigm_or_section_name_is_rejected(field, value):
    doc = _caps().to_dict()
    doc[field] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_nan_is_never_written():
    with pytest.raises(ValueError, match="NaN"):
        _caps(analog={"noise": float("nan")}).to_dict()


@pytest.mark.parametrize("which", SCHEMA_NAMES)
def test_schemas_are_valid_json_schema(which):
    jsonschema.Draft202012Validator.check_schema(load_schema(which))


def test_capabilities_list_reuses_the_capabilities_schema():
    good = _caps().to_dict()
    validate({"devices": [good, good]}, "capabilities_list")
    bad = dict(good, memory_bytes={"value": 1.0, "unit": "B"})  # a figure without its source
    with pytest.raises(jsonschema.ValidationError):
        validate({"devices": [good, bad]}, "capabilities_list")


def test_unavailable_device_must_say_why():
    info = {"uri": "x:0", "kind": "x", "available": False, "reason": "", "fix": "", "simulated": False, "paradigm": None, "summary": {}}
    with pytest.raises(jsonschema.ValidationError):
        validate({"devices": [info]}, "devices")
    validate({"devices": [dict(info, reason="unplugged")]}, "devices")


def test_unknown_schema_name_lists_the_committed_ones():
    with pytest.raises(ValueError, match="capabilities_list"):
        load_schema("nosuch")
