"""A rule-based finding labeler for radiology text: the 14 CheXpert observations with negation and uncertainty.

Generated and reference reports are labelled the same way, so clinical correctness (did the model say
'effusion' where the radiologist did, and 'no effusion' where they did not) can be scored. In the spirit of
the CheXpert/NegBio labelers, without their parsers (which need downloaded models):

1. the text is split into sentences and clauses (at ';', 'but', 'however', 'although', 'except', 'which');
2. each observation's mention patterns are matched in each clause;
3. a mention is *negative* when a negation cue precedes it in its clause ('no', 'without', 'negative for',
   'free of', 'resolved'...) or follows it ('is not seen', 'has resolved'); IU-style lists keep the scope
   ('no pneumothorax, effusion or consolidation' negates all three); a few explicit normal phrasings
   ('heart size is normal') are negative mentions;
4. otherwise *uncertain* when an uncertainty cue is in the clause ('may', 'possible', 'cannot exclude',
   'likely', 'versus', 'borderline'...), else *positive*.
An observation mentioned several times takes positive over uncertain over negative (CheXpert's rule).
No Finding is positive when no other observation except Support Devices is positive or uncertain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

MENTIONS = {
    "Enlarged Cardiomediastinum": [
        r"widen\w* (?:of the )?(?:superior )?mediastin\w*",
        r"mediastin\w* (?:is |are )?widen\w*",
        r"enlarged cardiomediastin\w*",
        r"cardiomediastinal (?:silhouette|contours?) (?:is |are )?(?:enlarged|widened|prominent)",
        r"mediastinal (?:widening|enlargement)",
    ],
    "Cardiomegaly": [
        r"cardiomegaly",
        r"enlarged (?:heart|cardiac (?:silhouette|contour|shadow))",
        r"cardiac enlargement",
        r"(?:heart|cardiac silhouette|cardiac shadow|heart size) (?:is |are )?(?:\w+ly )?(?:enlarged|increased|large|prominent)",  # noqa: E501 (one pattern per line)
        r"enlargement of the (?:heart|cardiac silhouette)",
    ],
    "Lung Lesion": [
        r"nodul\w*",
        r"\bmass(?:es)?\b",
        r"\blesions?\b",
        r"tumou?r",
        r"neoplasm",
        r"carcinoma",
        r"metasta\w*",
        r"\bcysts?\b",
    ],
    "Lung Opacity": [
        r"opaci\w*",
        r"infiltrat\w*",
        r"densit(?:y|ies)",
        r"air ?space (?:disease|opacit\w*)",
        r"hazy|haziness",
        r"reticul\w* (?:opacit\w*|markings?)",
        r"interstitial (?:markings?|opacit\w*|disease)",
        r"scarring|\bscars?\b",
    ],
    "Edema": [r"edema", r"(?:vascular|venous) congestion", r"congestive heart failure|\bchf\b", r"kerley"],
    "Consolidation": [r"consolidat\w*"],
    "Pneumonia": [r"pneumoni\w*", r"infectio\w*", r"infectious process"],
    "Atelectasis": [r"atelecta\w*", r"\bcollapse\w*"],
    "Pneumothorax": [r"pneumothora\w*"],
    "Pleural Effusion": [
        r"effusions?",
        r"pleural fluid",
        r"hydropneumothorax",
        r"blunt\w* of the (?:\w+ )*costophrenic",
    ],
    "Pleural Other": [r"pleural (?:thickening|scar\w*|plaques?|calcification)", r"fibrothorax", r"pleural-parenchymal"],
    "Fracture": [r"fractur\w*"],
    "Support Devices": [
        r"pacemaker",
        r"\bpacer\b",
        r"defibrillator|\baicd\b|\bicd\b",
        r"catheter",
        r"\bpicc\b",
        r"\btubes?\b",
        r"sternotomy",
        r"(?:surgical |vascular )?clips?\b",
        r"\bwires?\b",
        r"stents?\b",
        r"\bport\b|port-a-cath",
        r"hardware",
        r"prosthe\w*",
        r"(?:valve|joint) (?:replacement|prosthesis)",
        r"\bleads?\b",
        r"fixation",
        r"central (?:venous )?line",
        r"\bdevices?\b",
    ],
}

# Explicit normal statements, which negate without a negation word.
NORMAL_PHRASES = {
    "Cardiomegaly": [
        r"(?:heart|cardiac) (?:size|silhouette|contours?|shadow) (?:is |are )?(?:\w+ )?(?:normal|within normal limits|unremarkable|stable|upper limits? of normal)",  # noqa: E501
        r"normal (?:heart|cardiac) (?:size|silhouette)",
        r"heart is (?:normal|not enlarged)",
        r"cardiomediastinal (?:silhouette|contours?) (?:is |are )?(?:\w+ )?(?:normal|within normal limits|unremarkable|stable)",  # noqa: E501
        r"normal cardiomediastinal",
        r"cardiomediastinal silhouette and pulmonary vasculature are within normal limits",
    ],
    "Enlarged Cardiomediastinum": [
        r"(?:cardio)?mediastinal (?:silhouette|contours?) (?:is |are )?(?:\w+ )?(?:normal|within normal limits|unremarkable|stable)",  # noqa: E501
        r"normal (?:cardio)?mediastinal",
        r"mediastinum is (?:normal|within normal limits|unremarkable)",
    ],
    "Lung Opacity": [r"lungs? (?:is |are )?clear", r"clear lungs?"],
    "Pneumothorax": [],
}

PRE_NEGATION = (
    r"\bno\b",
    r"\bnot\b",
    r"\bwithout\b",
    r"negative for",
    r"free of",
    r"clear of",
    r"absence of",
    r"\bnor\b",
    r"resolution of",
    r"resolved",
    r"rule[sd]? out(?! of)",
    r"removal of",
    r"\bnone\b",
    r"\bnegative\b",
)
POST_NEGATION = (
    r"(?:is|are|was|were|has been|have been) (?:no longer |not )(?:seen|present|identified|visualized|appreciated|evident|demonstrated)",  # noqa: E501
    r"(?:has|have) (?:resolved|cleared|been removed)",
    r"(?:is|are) (?:absent|resolved|gone)",
    r"\bresolved\b",
    r"not (?:seen|identified|present|appreciated|evident)",
)
UNCERTAINTY = (
    r"\bmay\b",
    r"\bmight\b",
    r"\bpossib\w*",
    r"\bprobabl\w*",
    r"\blikely\b",
    r"\bsuggest\w*",
    r"suspicio\w*",
    r"concerning for",
    r"(?:cannot|can not|could not|not) (?:be )?(?:excluded|exclude|ruled out|rule out)",
    r"questionabl\w*",
    r"question of",
    r"\bversus\b|\bvs\.?\b",
    r"equivocal",
    r"differential",
    r"borderline",
    r"\bcould\b",
    r"\bpresum\w*",
    r"\bconsider\w*",
    r"\bindeterminate\b",
    r"\bvs\b",
    r"\bmimic\w*",
    r"\bor\b(?= \w+ (?:pneumonia|atelectasis|consolidation|infection|edema|effusion|mass|nodule))",
)
CLAUSE_BREAK = re.compile(
    r";|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bexcept\b|\bwhich\b|\bwhereas\b|\bwith the exception of\b"
)
SENTENCE_BREAK = re.compile(r"(?<!\d)\.(?!\d)|\n|\?|!")

_MENTIONS = {obs: re.compile("|".join(f"(?:{p})" for p in pats)) for obs, pats in MENTIONS.items()}
_NORMALS = {obs: re.compile("|".join(f"(?:{p})" for p in pats)) for obs, pats in NORMAL_PHRASES.items() if pats}
_PRE_NEG = re.compile("|".join(PRE_NEGATION))
_POST_NEG = re.compile("|".join(POST_NEGATION))
_UNCERTAIN = re.compile("|".join(UNCERTAINTY))


def clauses(text: str) -> list[str]:
    return [c.strip() for s in SENTENCE_BREAK.split(text.lower()) for c in CLAUSE_BREAK.split(s) if c.strip()]


def _mention_value(clause: str, start: int, end: int) -> float:
    before, after = clause[:start], clause[end:]
    if _PRE_NEG.search(before) or _POST_NEG.match(after.strip()) or _POST_NEG.search(after[:40]):
        return NEGATIVE
    if _UNCERTAIN.search(clause):
        return UNCERTAIN
    return POSITIVE


def label_text(text: str | None) -> dict[str, float | None]:
    """{observation: 1 positive, 0 negative, -1 uncertain, None not mentioned} for one report."""
    values: dict[str, list[float]] = {obs: [] for obs in OBSERVATIONS[1:]}
    for clause in clauses(text or ""):
        for obs, pattern in _NORMALS.items():
            if pattern.search(clause):
                values[obs].append(NEGATIVE)
        for obs, pattern in _MENTIONS.items():
            for match in pattern.finditer(clause):
                values[obs].append(_mention_value(clause, match.start(), match.end()))
    out: dict[str, float | None] = {}
    for obs, found in values.items():
        out[obs] = (
            None if not found else (POSITIVE if POSITIVE in found else UNCERTAIN if UNCERTAIN in found else NEGATIVE)
        )
    pathology = [v for obs, v in out.items() if obs != "Support Devices"]
    out = {"No Finding": NEGATIVE if any(v in (POSITIVE, UNCERTAIN) for v in pathology) else POSITIVE, **out}
    return out


@dataclass(frozen=True)
class BinaryLabels:
    """Labels as 0/1 for scoring: uncertain counts as positive (`uncertain_as`=1, CheXpert's U-Ones) or negative."""

    uncertain_as: float = 1.0

    def __call__(self, text: str | None) -> dict[str, int]:
        labels = label_text(text)
        return {obs: int((self.uncertain_as if v == UNCERTAIN else (v or 0.0)) >= 0.5) for obs, v in labels.items()}
