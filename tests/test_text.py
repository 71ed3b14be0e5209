from radcap.settings import TextRules
from radcap.text import choose_target, clean_raw, normalize

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
