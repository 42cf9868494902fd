import grpc

from fair4free.common.errors import CATALOG, EXIT_CODE_HELP, ErrorCode, ExitCode, Fair4FreeError


def test_every_error_code_has_a_catalog_entry() -> None:
    assert set(CATALOG) == set(ErrorCode)


def test_every_exit_code_has_help_text() -> None:
    assert set(EXIT_CODE_HELP) == set(ExitCode)
    assert all(text for text in EXIT_CODE_HELP.values())


def test_entries_say_what_to_do_next_and_never_report_success() -> None:
    for code, entry in CATALOG.items():
        assert entry.hint, code
        assert entry.status is not grpc.StatusCode.OK, code
        assert entry.exit_code is not ExitCode.OK, code


def test_public_message_is_one_line_with_the_hint() -> None:
    error = Fair4FreeError(ErrorCode.COLUMN_UNKNOWN, "no column 'sexx'")
    assert (
        error.public_message() == "no column 'sexx'; name a column that exists in the table header"
    )
    assert "\n" not in error.public_message()
