"""`aiserve-gpuproxy-admin statement EMAIL --month M --format csv|pdf [--output FILE]`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pypdf import PdfReader

from infrastructure.settings import Settings
from interfaces.cli.admin import main as admin_main
from interfaces.statement_export import CSV_COLUMNS
from tests.support.http import env_of


def test_admin_cli_writes_statement_files(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env_of(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    month = datetime.now(UTC).strftime("%Y-%m")
    assert admin_main(["migrate"]) == 0
    assert admin_main(["create-user", "st@example.com", "s3cret-pass", "St"]) == 0
    assert admin_main(["grant-credits", "st@example.com", "20.00"]) == 0
    capsys.readouterr()
    assert admin_main(["statement", "st@example.com", "--month", month, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    summary = {r["type"]: r["amount_usd"] for r in rows if r["record"] == "summary"}
    assert summary["grants"] == summary["closing_balance"] == "20.000000"
    assert admin_main(["statement", "st@example.com", "--month", month, "--format", "pdf"]) == 0
    pdf = PdfReader(tmp_path / f"statement-{month}.pdf")
    text = "\n".join(p.extract_text() for p in pdf.pages)
    assert "Account: st@example.com" in text
    assert "20.000000" in text
    out = tmp_path / "s.csv"
    argv = ["statement", "st@example.com", "--month", month, "--format", "csv", "--output"]
    assert admin_main([*argv, str(out)]) == 0
    assert out.read_text().startswith(",".join(CSV_COLUMNS))
    with pytest.raises(SystemExit):
        admin_main(["statement", "st@example.com", "--month", month, "--format", "xls"])
