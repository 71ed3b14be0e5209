"""What `radcap app` runs: the page's settings (with the embedded default) and the Streamlit command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from radcap.core.errors import RadcapError
from radcap.core.settings import PROFILES, AppSettings, load_settings
from radcap.web import PAGE

DEMO_STUDIES = Path("out/demo/pacs_export")  # where `make demo` writes its PACS-like export


def with_embedded_default(cfg: AppSettings, model_given: bool) -> tuple[AppSettings, str | None]:
    """The configured model when it is registered (or given); otherwise, after `make demo`, the demo's champion
    with the demo's phantom studies to pick from. (settings, note for the user)."""
    from radcap.registry.store import parse_model_uri

    if model_given or not cfg.model.startswith("models:/"):
        return cfg, None
    try:
        parse_model_uri(cfg.model)
        return cfg, None
    except RadcapError as missing:
        demo = load_settings(PROFILES / "demo.toml")
        demo_model = f"models:/{demo.captioner.registered_name}@{demo.promotion.alias}"
        try:
            parse_model_uri(demo_model)
        except RadcapError:
            raise RadcapError(
                f"{missing}; nor is the demo's champion registered: run `make demo` first, or give "
                "--model (a models:/ URI or a captioner folder)"
            ) from None
    studies = cfg.studies or (DEMO_STUDIES.resolve() if DEMO_STUDIES.is_dir() else None)
    note = f"{cfg.model} is not registered: serving the demo's champion {demo_model}"
    return cfg.model_copy(update={"model": demo_model, "studies": studies}), note


def streamlit_command(cfg: AppSettings) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) running the page with `cfg`: headless, no usage statistics sent, no file watcher,
    Streamlit's own upload limit at the page's, error details kept out of the browser."""
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PAGE),
        "--server.headless",
        "true",
        "--server.address",
        cfg.host,
        "--server.port",
        str(cfg.port),
        "--server.maxUploadSize",
        str(cfg.max_upload_mb),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--global.developmentMode",
        "false",
    ]
    env = {
        **os.environ,
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        "RADCAP_APP__MODEL": cfg.model,
        "RADCAP_APP__RETRIEVER": cfg.retriever or "",
        "RADCAP_APP__NEIGHBOURS": str(cfg.neighbours),
        "RADCAP_APP__MAX_UPLOAD_MB": str(cfg.max_upload_mb),
    }
    if cfg.studies is not None:
        env["RADCAP_APP__STUDIES"] = str(Path(cfg.studies).resolve())
    return argv, env
