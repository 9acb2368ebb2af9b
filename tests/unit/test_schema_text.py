"""The shipped DICOM schema is the printed PS3.15 H.1.3 schema, repaired and nothing else."""

import pytest
from printed_schema import printed_definitions

from profiles.app_config.schema_text import (
    INCLUDE_FILE,
    LDIF_FILE,
    parse_schema,
    to_ldif,
)
from profiles.errors import ParseError


@pytest.fixture(scope="module")
def shipped():
    return parse_schema(INCLUDE_FILE.read_text())


def test_31_attribute_types_and_8_object_classes_numbered_as_printed(shipped):
    attrs = [d for d in shipped if d.kind == "attributetype"]
    classes = [d for d in shipped if d.kind == "objectclass"]
    assert [d.oid for d in attrs] == [f"1.2.840.10008.15.0.3.{n}" for n in range(1, 32)]
    assert [d.oid for d in classes] == [f"1.2.840.10008.15.0.4.{n}" for n in range(1, 9)]


def test_every_definition_equals_the_printed_one(shipped):
    assert shipped == printed_definitions()


def test_printed_damage_is_what_the_reader_repairs():
    printed = {d.name: d for d in printed_definitions()}
    # 4.3 lost its closing parenthesis in print; its MAY list still ends the definition.
    assert printed["dicomUniqueAETitlesRegistryRoot"].term("MAY") == ("description",)
    # DESC strings wrapped onto column 0 come back as one line.
    assert printed["dicomStationName"].term("DESC") == (
        "Station Name of the device. Should be the same as the value of Station Name "
        "(0008,1010) in SOP instances created by this device.")


def test_kept_as_printed_issuer_of_patient_id_is_multi_valued(shipped):
    by_name = {d.name: d for d in shipped}
    assert "SINGLE-VALUE" not in dict(by_name["dicomIssuerOfPatientID"].terms)
    assert "SINGLE-VALUE" in dict(by_name["dicomDeviceName"].terms)
    assert by_name["dicomAETitle"].term("EQUALITY") == "caseExactIA5Match"
    assert by_name["dicomNetworkAE"].term("MUST") == (
        "dicomAETitle", "dicomNetworkConnectionReference",
        "dicomAssociationInitiator", "dicomAssociationAcceptor")


def test_shipped_ldif_is_generated_from_the_include_file(shipped):
    assert LDIF_FILE.read_text() == to_ldif(shipped)


@pytest.mark.parametrize("text", [
    "attributetype ( 1.2.3 NAME 'x'",            # unterminated
    "attributetype ( x.y NAME 'x' )",             # bad OID
    "attributetype ( 1.2.3 COLOUR 'x' )",         # unknown keyword
    "objectklass ( 1.2.3 NAME 'x' )",             # unknown definition kind
])
def test_bad_schema_text_raises_parse_error(text):
    with pytest.raises(ParseError):
        parse_schema(text)
