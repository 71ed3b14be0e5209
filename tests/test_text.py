from radcap.core.settings import TextRules
from radcap.text.normalize import choose_target, clean_raw, normalize

RULES = TextRules()


def test_placeholders_kept_as_one_token_by_default():
    assert normalize("Normal chest x-XXXX.", RULES) == "normal chest x-xxxx."
    assert normalize("There are no XXXX of a pleural effusion.", RULES) == "there are no xxxx of a pleural effusion."


def test_placeholders_dropped_cleanly():
    rules = TextRules(anonymized="drop")
    assert normalize("Normal chest x-XXXX.", rules) == "normal chest x."
    assert normalize("Midline sternotomy XXXX. Clear lungs.", rules) == "midline sternotomy. clear lungs."


def test_list_numbering_removed_but_not_decimals_or_levels():
    text = "1. No acute process. 2. Stable 2.5 cm nodule at T12. 3) Clear lungs."
    assert normalize(text, RULES) == "no acute process. stable 2.5 cm nodule at t12. clear lungs."
    assert normalize(text, TextRules(strip_list_numbering=False)).startswith("1. no acute")


def test_whitespace_and_case():
    assert normalize("  Heart   size\n normal.  ", RULES) == "heart size normal."
    assert normalize("Heart Normal", TextRules(lowercase=False)) == "Heart Normal"


def test_absent_values():
    for value in (None, float("nan"), "", "  ", "None.", "N/A"):
        assert clean_raw(value, RULES) is None
    assert clean_raw(" Positive TB test ", RULES) == "Positive TB test"


def test_target_section_and_fallback():
    assert choose_target("f", "i", RULES) == ("i", "impression")
    assert choose_target("f", None, RULES) == ("f", "findings")
    assert choose_target("f", None, TextRules(fallback_to_other_section=False)) == (None, "impression")
    assert choose_target("f", "i", TextRules(target="findings+impression")) == ("f i", "findings+impression")
    assert choose_target(None, None, RULES)[0] is None


def test_template_placeholders_and_boilerplate_are_absent_text():
    from radcap.text.normalize import placeholder

    for text in (
        "replace this - description of the image or findings.",
        "see above.",
        "n/a",
        "...",
        "xxxx.",
        "xxxx xxxx",
        "[redacted]",
        "insert caption here",
        "to be completed",
        "-",
    ):
        assert placeholder(text, RULES), text
    for text in (
        "fatty replacement of the supraspinatus muscle.",
        "no acute disease.",
        "xxxx pleural effusion.",
        "see the nodule above the left hilum.",
    ):
        assert not placeholder(text, RULES), text
    assert not placeholder("see above.", TextRules(placeholder_patterns=()))  # configurable


def test_a_placeholder_section_falls_back_and_a_placeholder_report_is_rejected_with_the_reason():
    from radcap.ingestion.common import report_row

    base = {"report_id": "r", "study_id": "s", "group_id": "g", "dataset": "iu-xray", "source": "f.xml", "rules": RULES}
    row = report_row(**base, findings_raw="Heart size normal.", impression_raw="See above.")
    assert row["target"] == "heart size normal." and row["target_section"] == "findings" and row["_unusable"] is None
    row = report_row(**base, caption_raw="Replace this - DESCRIPTION OF THE IMAGE OR FINDINGS.")
    assert row["target"] is None and "Replace this - DESCRIPTION" in row["_unusable"]
