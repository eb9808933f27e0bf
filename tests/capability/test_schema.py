"""Capability data: provenance rules, JSON conversion, the committed schemas."""

import json

import jsonschema
import pytest

from hal.capability import Capabilities, Figure, OpSupport, Paradigm, load_schema, validate


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


def test_unknown_section_name_is_rejected():
    doc = _caps().to_dict()
    doc["sections"] = {"astrology": {}}
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_nan_is_never_written():
    with pytest.raises(ValueError, match="NaN"):
        _caps(analog={"noise": float("nan")}).to_dict()


def test_schemas_are_valid_json_schema():
    for which in ("capabilities", "devices"):
        jsonschema.Draft202012Validator.check_schema(load_schema(which))
