"""A PACS over DICOMweb (dicomweb-client): QIDO-RS finds studies, WADO-RS fetches them, STOW-RS stores reports.

Everything a PACS returns is outside input. The HTTP session under the client (`BoundedSession`) makes every
response finite: a connect and per-read timeout, a whole-response deadline and a size cap, and a bounded
number of tries with exponential backoff on a 5xx/429, a timeout, a lost connection or a cut body. A study
whose instances do not all arrive (fewer than QIDO counted, a part that is not DICOM, a wrong content type)
is *pending*: retried by the next poll, never half-captioned. What a PACS says is validated before it names a
file: only DICOM UIDs become file names, so nothing it returns can write outside the output folder.
Credentials come from settings (`pacs`), are sent only as headers, and are never logged.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from radcap.core.errors import RadcapError
from radcap.core.settings import PacsSettings
from radcap.core.uids import valid_uid

SCHEME = "dicomweb:"
RETRY_STATUS = {429, 500, 502, 503, 504}
PAGE = 500  # QIDO results per request


class PacsError(RadcapError):
    """The PACS could not be reached, or kept failing after the retries."""


def is_dicomweb(location: str | Path) -> bool:
    return str(location).startswith(SCHEME)


def base_url(location: str) -> str:
    url = str(location).removeprefix(SCHEME).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise RadcapError(f"{location}: not a DICOMweb address (dicomweb:http://HOST:PORT/dicom-web)")
    return url


def safe_url(url: str) -> str:
    """The URL without any user:password part, for messages and logs."""
    return re.sub(r"//[^/@]*@", "//", url)


class BodyError(Exception):
    """A response body that is cut, too large or too slow."""


class BoundedSession(requests.Session):
    """A requests session whose every response is read whole, within bounds, with retries (module doc)."""

    def __init__(self, cfg: PacsSettings):
        super().__init__()
        self.cfg = cfg
        self.verify = str(cfg.ca_bundle) if cfg.ca_bundle else cfg.verify_tls
        if cfg.token is not None:
            self.headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"
        elif cfg.username:
            self.auth = (cfg.username, cfg.password.get_secret_value() if cfg.password else "")

    def request(self, method, url, *args, **kwargs):
        kwargs["stream"] = True  # read whole here, within bounds; the client then parses `content`
        kwargs["timeout"] = (self.cfg.timeout_seconds, self.cfg.timeout_seconds)
        problem = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff_seconds * 2 ** (attempt - 1))
            try:
                response = super().request(method, url, *args, **kwargs)
                if response.status_code in RETRY_STATUS:
                    problem = f"HTTP {response.status_code}"
                    response.close()
                    continue
                response._content = self._read(response)
                response._content_consumed = True
                return response
            except requests.exceptions.SSLError as exc:
                raise PacsError(f"{safe_url(url)}: TLS check failed ({type(exc).__name__})") from exc
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                problem = f"{type(exc).__name__}"
            except BodyError as exc:
                problem = str(exc)
        raise PacsError(f"{safe_url(url)}: {problem} after {self.cfg.retries + 1} tries")

    def _read(self, response: requests.Response) -> bytes:
        deadline = time.monotonic() + self.cfg.response_seconds
        limit = self.cfg.max_response_mb * 2**20
        chunks, size = [], 0
        try:
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise BodyError(f"response larger than {self.cfg.max_response_mb} MB (cut)")
                if time.monotonic() > deadline:
                    raise BodyError(f"response still arriving after {self.cfg.response_seconds:.0f} s (cut)")
                chunks.append(chunk)
        finally:
            response.close()
        # A body shorter than its Content-Length is urllib3's IncompleteRead (ChunkedEncodingError), retried.
        return b"".join(chunks)


@dataclass(frozen=True)
class StudyFound:
    uid: str
    instances: int  # NumberOfStudyRelatedInstances, as QIDO counts them
    modalities: tuple[str, ...]


def _value(item: dict, tag: str) -> Any:
    """A DICOM JSON attribute's first value (PS3.18 F.2), None when absent or malformed."""
    entry = item.get(tag) if isinstance(item, dict) else None
    values = entry.get("Value") if isinstance(entry, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _values(item: dict, tag: str) -> list:
    entry = item.get(tag) if isinstance(item, dict) else None
    values = entry.get("Value") if isinstance(entry, dict) else None
    return values if isinstance(values, list) else []


def parse_studies(items: Any) -> tuple[list[StudyFound], list[str]]:
    """QIDO-RS study results -> the studies, and a reason for each entry that is not one."""
    if not isinstance(items, list):
        return [], [f"QIDO-RS answered {type(items).__name__}, not a list of studies"]
    found, problems = [], []
    for k, item in enumerate(items):
        uid = valid_uid(_value(item, "0020000D"))
        count = _value(item, "00201208")
        if uid is None:
            problems.append(f"result {k}: no valid Study Instance UID")
            continue
        try:
            instances = int(count)
        except (TypeError, ValueError):
            instances = -1  # not counted: fetched and checked as it comes
        modalities = tuple(str(m) for m in _values(item, "00080061") if isinstance(m, str))
        found.append(StudyFound(uid, instances, modalities))
    return found, problems


class Pacs:
    """One DICOMweb server (`dicomweb:URL`)."""

    def __init__(self, location: str, cfg: PacsSettings):
        from dicomweb_client.api import DICOMwebClient

        self.url = base_url(location)
        self.cfg = cfg
        self.client = DICOMwebClient(self.url, session=BoundedSession(cfg))
        self.client.set_http_retry_params(retry=False)  # the session retries, with its bounds

    @property
    def key(self) -> str:
        """A file-name-safe name of this server (its URL without credentials, hashed)."""
        return hashlib.sha256(safe_url(self.url).encode()).hexdigest()[:16]

    def check(self) -> None:
        """One QIDO request: a PACS that is down or refuses us is one line, before any work."""
        try:
            self.client.search_for_studies(limit=1)
        except PacsError as exc:
            raise PacsError(f"the PACS at {safe_url(self.url)} cannot be reached: {exc}") from exc
        except requests.HTTPError as exc:
            raise PacsError(f"the PACS at {safe_url(self.url)} refused the query: {_status(exc)}") from exc
        except (ValueError, requests.RequestException) as exc:
            raise PacsError(f"the PACS at {safe_url(self.url)} gave no usable answer: {exc}") from exc

    def find_studies(self) -> tuple[list[StudyFound], list[str]]:
        """Every study matching the settings' filters (paged), and the problems with entries that are not one."""
        filters: dict[str, str] = {}
        if self.cfg.study_date_from or self.cfg.study_date_to:
            filters["StudyDate"] = f"{self.cfg.study_date_from or ''}-{self.cfg.study_date_to or ''}"
        fields = ["StudyInstanceUID", "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "StudyDate"]
        found: dict[str, StudyFound] = {}
        problems: list[str] = []
        for page in self._pages(filters, fields):
            studies, bad = parse_studies(page)
            problems += bad
            for study in studies:
                wanted = not self.cfg.modalities or set(study.modalities) & set(self.cfg.modalities)
                if wanted or not study.modalities:
                    found.setdefault(study.uid, study)
        return list(found.values()), problems

    def _pages(self, filters: dict, fields: list[str]) -> Iterator[Any]:
        offset = 0
        while True:
            try:
                page = self.client.search_for_studies(search_filters=filters, fields=fields, limit=PAGE, offset=offset)
            except requests.HTTPError as exc:
                raise PacsError(f"{safe_url(self.url)}: QIDO-RS failed: {_status(exc)}") from exc
            except (ValueError, requests.RequestException) as exc:
                raise PacsError(f"{safe_url(self.url)}: QIDO-RS answer unusable: {exc}") from exc
            yield page
            if not isinstance(page, list) or len(page) < PAGE:
                return
            offset += PAGE

    def fetch_study(self, study: StudyFound, into: Path) -> tuple[list[Path], str | None]:
        """Write the study's instances under `into/STUDY/SERIES/SOP.dcm`; ([], reason) when it is pending."""
        try:
            datasets = self.client.retrieve_study(study.uid)
        except PacsError as exc:
            return [], str(exc)
        except requests.HTTPError as exc:
            return [], f"WADO-RS failed: {_status(exc)}"
        except Exception as exc:  # a malformed multipart body, a part that is not DICOM: the PACS's answer
            return [], f"WADO-RS answer unusable: {type(exc).__name__}: {str(exc)[:200]}"
        if study.instances >= 0 and len(datasets) != study.instances:
            return [], f"{len(datasets)} of {study.instances} instances arrived"
        written = []
        for ds in datasets:
            if not is_image(ds):
                continue  # a report (radcap's own SR included), a key object, a presentation state: not an input
            got = valid_uid(getattr(ds, "StudyInstanceUID", None))
            series, sop = (valid_uid(getattr(ds, name, None)) for name in ("SeriesInstanceUID", "SOPInstanceUID"))
            if got != study.uid or series is None or sop is None:
                return [], "an instance with invalid or foreign UIDs (not of this study)"
            path = into / study.uid / series / f"{sop}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                ds.save_as(path, enforce_file_format=True)
            except Exception as exc:  # written as received; one that cannot be is the PACS's
                return [], f"instance {sop} cannot be written as DICOM: {type(exc).__name__}"
            written.append(path)
        return written, None

    def image_digest(self, study_uid: str) -> str | None:
        """A digest of the study's image instances (QIDO-RS instance level, no pixel data); None on failure."""
        try:
            items = self.client.search_for_instances(
                study_instance_uid=study_uid, fields=["SOPClassUID", "SOPInstanceUID", "Modality"]
            )
        except (PacsError, ValueError, requests.RequestException):
            return None
        if not isinstance(items, list):
            return None
        sops = [
            str(_value(item, "00080018"))
            for item in items
            if not str(_value(item, "00080016") or "").startswith(NOT_IMAGE_CLASSES)
            and str(_value(item, "00080060") or "").upper() not in NOT_IMAGES
        ]
        return _digest(sops)

    def store(self, datasets: list) -> None:
        """STOW-RS; a PacsError after the retries."""
        try:
            self.client.store_instances(datasets)
        except requests.HTTPError as exc:
            raise PacsError(f"{safe_url(self.url)}: STOW-RS failed: {_status(exc)}") from exc
        except (ValueError, requests.RequestException) as exc:
            raise PacsError(f"{safe_url(self.url)}: STOW-RS answer unusable: {exc}") from exc


NOT_IMAGES = {"SR", "KO", "PR", "DOC", "REG", "SEG", "RTSTRUCT"}
NOT_IMAGE_CLASSES = (  # SOP classes: structured reports and key objects, presentation states, documents
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.104.",
)


def is_image(ds) -> bool:
    return "PixelData" in ds and str(getattr(ds, "Modality", "")).upper() not in NOT_IMAGES


def _status(exc: requests.HTTPError) -> str:
    response = exc.response
    return f"HTTP {response.status_code}" if response is not None else type(exc).__name__


class Watermark:
    """Which studies of one PACS were captioned with their outputs committed: `OUT/.dicomweb/SERVER.json`, per
    study its QIDO instance count and a digest of its image instances' SOP Instance UIDs. A study whose count is
    unchanged is not looked at; one whose count changed is listed at instance level (QIDO-RS, no pixels) and
    fetched again only when its images changed (a view arrived), not when a report was added (radcap's own
    SR, stored into the same study). The mark advances for a study only after its captions and reports were
    committed."""

    def __init__(self, out: Path, pacs: Pacs):
        self.pacs = pacs
        self.path = Path(out) / ".dicomweb" / f"{pacs.key}.json"
        self.seen: dict[str, dict] = {}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                self.seen = {str(k): {"count": int(v["count"]), "images": str(v["images"])} for k, v in loaded.items()}
            except (ValueError, AttributeError, TypeError, KeyError) as exc:
                raise RadcapError(
                    f"{self.path}: unreadable watermark ({exc!r}); delete it to poll from the start"
                ) from exc

    def todo(self, studies: list[StudyFound]) -> list[StudyFound]:
        todo, recounted = [], False
        for study in studies:
            mark = self.seen.get(study.uid)
            if mark is not None and study.instances >= 0 and mark["count"] == study.instances:
                continue
            if mark is not None and self.pacs.image_digest(study.uid) == mark["images"]:
                mark["count"] = study.instances  # only non-image instances were added: nothing to caption
                recounted = True
                continue
            todo.append(study)
        if recounted:
            self._save()
        return todo

    def advance(self, studies: list[StudyFound], spool: Path) -> None:
        """Mark `studies` done: their QIDO count, and the image instances fetched into `spool`."""
        for study in studies:
            sops = sorted(p.stem for p in (spool / study.uid).rglob("*.dcm"))
            self.seen[study.uid] = {"count": study.instances, "images": _digest(sops)}
        self._save()

    def _save(self) -> None:
        from radcap.core.io import write_json

        write_json(self.seen, self.path, indent=None)


def _digest(sop_uids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()
