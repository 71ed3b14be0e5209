"""Indiana University chest X-ray collection (Open-i / NLMCXR): the XML reports and the Kaggle CSV release."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from lxml import etree

from radcap.core.errors import RadcapError
from radcap.core.settings import TextRules
from radcap.ingestion.common import Parsed, find_image, image_row, natural_key, report_row

DATASET = "iu-xray"
SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
MAX_XML_BYTES = 5_000_000  # an Open-i report is a few KB; anything this large is not one

# Safe parsing: no entity substitution, no DTD loading, no network, no huge-tree mode (libxml2's
# amplification limits stay on). Documents that declare a DOCTYPE are refused after parsing.
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
)


def image_stem_key(report_id: str, image_id: str) -> tuple[str, str]:
    """(study, 'IM-...') key that matches an XML image id with a projections-CSV file name.

    XML `CXR1_1_IM-0001-3001` and CSV `1_IM-0001-3001.dcm.png` (uid 1) are the same image.
    """
    match = re.search(r"IM-.*$", image_id)
    return report_id, match.group(0) if match else image_id


def _text(element: etree._Element | None) -> str | None:
    return None if element is None else "".join(element.itertext())


def _parse_xml_file(path: Path, parsed: Parsed, rules: TextRules) -> None:
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return parsed.reject(source, f"cannot read file: {exc.strerror}")
    if not data.strip():
        return parsed.reject(source, "empty file")
    if len(data) > MAX_XML_BYTES:
        return parsed.reject(source, f"file is {len(data):,} bytes, larger than any report ({MAX_XML_BYTES:,})")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return parsed.reject(source, f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})")
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        return parsed.reject(source, f"malformed XML: {exc.msg} (line {exc.lineno})")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.system_url:
        return parsed.reject(source, "XML declares a DOCTYPE/entities; refused (external entity / expansion risk)")
    if root.tag != "eCitation":
        return parsed.reject(source, f"not an Open-i report: root element is <{root.tag}>, expected <eCitation>")
    uid_element = root.find("uId")
    uid = (uid_element.get("id") or "").strip() if uid_element is not None else ""
    if not uid:
        return parsed.reject(source, "no <uId id=...>: the report has no identifier")
    sections = {(el.get("Label") or "").upper(): _text(el) for el in root.iterfind(".//Abstract/AbstractText")}
    image_ids = list(dict.fromkeys(i.strip() for i in root.xpath("parentImage/@id") if i.strip()))
    report = report_row(
        report_id=uid,
        study_id=uid,
        group_id=uid,  # IU has no patient ids; each report is its own group
        dataset=DATASET,
        source=source,
        rules=rules,
        findings_raw=sections.get("FINDINGS"),
        impression_raw=sections.get("IMPRESSION"),
        indication=sections.get("INDICATION"),
        comparison=sections.get("COMPARISON"),
        mesh=[t.strip() for t in root.xpath("MeSH/major/text()") if t.strip()],
    )
    if report["target"] is None:
        reason = report["_unusable"] or "report has neither findings nor impression"
        parsed.reject(source, reason, item=uid)
        for image_id in image_ids:
            parsed.reject_image(source, f"its report was rejected: {reason}", image_id)
        return
    parsed.reports.append(report)
    for image_id in image_ids:
        parsed.add_image(image_row(image_id, report), source)


def read_iu_xml(
    source: Path, rules: TextRules, images_dir: Path | None = None, views_csv: Path | None = None
) -> Parsed:
    """Every `*.xml` under `source` (sorted naturally); duplicates after the first are rejected."""
    if not source.is_dir():
        raise RadcapError(f"{source}: not a folder of Open-i XML reports")
    files = sorted(source.rglob("*.xml"), key=natural_key)
    if not files:
        raise RadcapError(f"{source}: no *.xml files found")
    parsed = Parsed(inputs=len(files))
    for path in files:
        try:
            _parse_xml_file(path, parsed, rules)
        except Exception as exc:
            parsed.reject(str(path), f"cannot parse the report ({type(exc).__name__}: {exc})")
    _drop_duplicate_reports(parsed)
    views = _read_views(views_csv) if views_csv else {}
    studies: dict[str, list[str]] = {}
    for image in parsed.images:
        studies.setdefault(r2gen_study_key(image["image_id"]), []).append(image["image_id"])
    for image in parsed.images:
        image["view"] = views.get(image_stem_key(image["report_id"], image["image_id"]), "unknown")
        image["modality"] = "CX"
        image["path"] = find_iu_image(images_dir, image["image_id"], studies)
    return parsed


def r2gen_study_key(image_id: str) -> str:
    """R2Gen's study folder of an NLMCXR image: `CXR54_IM-2145-1002` -> `CXR54_IM-2145`."""
    return image_id.rsplit("-", 1)[0]


def find_iu_image(images_dir: Path | None, image_id: str, studies: dict[str, list[str]]) -> str | None:
    """An IU image in either layout: Open-i's `NLMCXR_png` (flat, `CXR54_IM-2145-1002.png`) or R2Gen's
    `iu_xray/images/CXR54_IM-2145/<n>.png`, where n is the image's rank among its study's image names (R2Gen
    numbered each study's images in name order: 0 the first, 1 the second)."""
    found = find_image(images_dir, image_id)
    if found or images_dir is None:
        return found
    key = r2gen_study_key(image_id)
    folder = images_dir / key
    if not folder.is_dir():
        return None
    return find_image(folder, str(sorted(set(studies[key])).index(image_id)))


def _drop_duplicate_reports(parsed: Parsed) -> None:
    """The first report of an id is kept; a later one is a reject, and so are its images (they are never
    attached to the kept report). An image id referenced by two kept reports stays with the first."""
    first_source: dict[str, str] = {}
    kept, dropped = [], set()
    for report in parsed.reports:
        rid = report["report_id"]
        if rid in first_source:
            parsed.reject(
                report["source"], f"duplicate report id {rid} (kept the one in {first_source[rid]})", item=rid
            )
            dropped.add(report["source"])
        else:
            first_source[rid] = report["source"]
            kept.append(report)
    parsed.reports = kept
    owner: dict[str, str] = {}
    images = []
    for image in parsed.images:
        image_id, source = image["image_id"], image["_source"]
        if source in dropped:
            parsed.reject(
                source, f"its report, a duplicate of {image['report_id']}, was rejected", item=image_id, kind="image"
            )
        elif image_id in owner:
            parsed.reject(
                source, f"image {image_id} is already referenced by {owner[image_id]}", item=image_id, kind="image"
            )
        else:
            owner[image_id] = source
            images.append(image)
    parsed.images = images


def _read_views(path: Path) -> dict[tuple[str, str], str]:
    """Projections CSV (uid, filename, projection) -> {(report_id, 'IM-...'): frontal|lateral}."""
    rows = _read_csv(path, required=("uid", "filename", "projection"))
    return {
        image_stem_key(f"CXR{row['uid'].strip()}", _csv_image_id(row["filename"])): _view(row["projection"])
        for row in rows
    }


def _view(projection: str | None) -> str:
    value = (projection or "").strip().lower()
    return value if value in ("frontal", "lateral") else "unknown"


def _csv_image_id(filename: str) -> str:
    """`1_IM-0001-4001.dcm.png` -> `CXR1_IM-0001-4001` (the NLMCXR naming used by the XML)."""
    stem = filename.strip()
    for suffix in (".png", ".dcm"):
        stem = stem.removesuffix(suffix)
    return f"CXR{stem}"


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise RadcapError(f"{path}: missing columns {missing} (has {reader.fieldnames})")
            return list(reader)
    except FileNotFoundError as exc:
        raise RadcapError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise RadcapError(f"{path}: not valid UTF-8 at byte {exc.start}") from exc
    except csv.Error as exc:
        raise RadcapError(f"{path}: malformed CSV: {exc}") from exc


def read_iu_csv(
    source: Path, rules: TextRules, images_dir: Path | None = None, projections: Path | None = None
) -> Parsed:
    """`indiana_reports.csv` (a file, or the folder holding it) plus `indiana_projections.csv` beside it."""
    reports_csv = source / "indiana_reports.csv" if source.is_dir() else source
    projections = projections or reports_csv.with_name("indiana_projections.csv")
    rows = _read_csv(reports_csv, required=("uid", "MeSH", "findings", "impression"))
    parsed = Parsed(inputs=len(rows))
    by_id: dict[str, dict] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{reports_csv}:{line}"
        uid = (row.get("uid") or "").strip()
        if not uid:
            parsed.reject(where, "row has no uid")
            continue
        report_id = f"CXR{uid}"
        if report_id in by_id:
            parsed.reject(where, f"duplicate uid {uid} (kept {by_id[report_id]['source']})", item=report_id)
            continue
        report = report_row(
            report_id=report_id,
            study_id=report_id,
            group_id=report_id,
            dataset=DATASET,
            source=where,
            rules=rules,
            findings_raw=row.get("findings"),
            impression_raw=row.get("impression"),
            indication=row.get("indication"),
            comparison=row.get("comparison"),
            mesh=[t.strip() for t in (row.get("MeSH") or "").split(";") if t.strip()],
        )
        if report["target"] is None:
            parsed.reject(where, report["_unusable"] or "report has neither findings nor impression", item=report_id)
            continue
        by_id[report_id] = report
        parsed.reports.append(report)
    if projections.exists():
        _attach_projection_images(projections, by_id, parsed, images_dir)
    return parsed


def _attach_projection_images(path: Path, reports: dict[str, dict], parsed: Parsed, images_dir: Path | None) -> None:
    rows = _read_csv(path, required=("uid", "filename", "projection"))
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        image_id = _csv_image_id(row["filename"] or "")
        report = reports.get(f"CXR{(row['uid'] or '').strip()}")
        if report is None:
            parsed.reject_image(where, f"uid {row['uid']} has no usable report", image_id)
        elif image_id in seen or not (row["filename"] or "").strip():
            parsed.reject_image(where, f"duplicate or empty image name {row['filename']!r}", image_id)
        else:
            seen.add(image_id)
            path_found = find_image(images_dir, row["filename"].strip(), image_id)
            parsed.add_image(
                image_row(image_id, report, view=_view(row["projection"]), modality="CX", path=path_found), where
            )
