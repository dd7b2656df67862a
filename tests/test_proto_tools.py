"""The proto style checker and the generated-code drift check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import lint_proto  # noqa: E402

GOOD = """\
// Thing is an example message.
message Thing {
\t// name is the thing's name.
\tstring name = 1;
\t// kind is what it is.
\t//
\t// A second paragraph, also a sentence.
\toneof kind {
\t\t// small is set for small things.
\t\tbool small = 2;
\t}
}

// Colour lists colours.
enum Colour {
\t// COLOUR_UNSPECIFIED is the default.
\tCOLOUR_UNSPECIFIED = 0;
}
"""


class LintProtoTests(SynchronousTestCase):
    def problems(self, text: str) -> list[str]:
        return [p.message for p in lint_proto.lint_text(text)]

    def test_clean_text_passes(self) -> None:
        self.assertEqual(self.problems(GOOD), [])

    def test_repository_protos_pass(self) -> None:
        for path in sorted((ROOT / "proto").glob("*.proto")):
            self.assertEqual(lint_proto.lint_text(path.read_text(), str(path)), [])

    def test_lowercase_start(self) -> None:
        text = GOOD.replace("// Thing is an example", "// thing is an example")
        self.assertIn("comment must start with a capital letter", self.problems(text))

    def test_missing_punctuation(self) -> None:
        text = GOOD.replace("// name is the thing's name.", "// name is the name")
        self.assertIn("comment must end with punctuation", self.problems(text))

    def test_field_comment_must_start_with_field_name(self) -> None:
        text = GOOD.replace("// name is the thing's name.", "// The thing's name.")
        self.assertIn("comment of 'name' must start with its name", self.problems(text))
        text = GOOD.replace("// small is set", "// Tiny is set")
        self.assertIn(
            "comment of 'small' must start with its name", self.problems(text)
        )
        text = GOOD.replace("// COLOUR_UNSPECIFIED is", "// Unspecified is")
        self.assertTrue(any("COLOUR_UNSPECIFIED" in p for p in self.problems(text)))

    def test_long_lines_count_tabs_as_eight(self) -> None:
        # 70 characters after two tabs: 86 columns, but only 72 characters.
        text = GOOD.replace(
            "\t\t// small is set for small things.",
            "\t\t// small is set for small things" + "," * 37 + ".",
        )
        self.assertTrue(any("columns" in p for p in self.problems(text)))

    def test_command_line_exit_status(self) -> None:
        bad = Path(self.mktemp() + ".proto")
        bad.write_text(GOOD.replace("// Thing is", "// thing is"))
        result = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "lint_proto.py"), str(bad)],
            capture_output=True,
            text=True,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("capital letter", result.stdout)


class CodegenDriftTests(SynchronousTestCase):
    def run_check(self, root: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(root / "tools" / "gen_rpc.py"), "--check"],
            capture_output=True,
            text=True,
            cwd=root,
        )

    def copy_tree(self) -> Path:
        root = Path(self.mktemp()).resolve()
        for part in ("proto", "tools", "barterbackup/_proto"):
            shutil.copytree(ROOT / part, root / part)
        return root

    def test_committed_code_matches_protos(self) -> None:
        result = self.run_check(ROOT)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_changed_proto_is_detected(self) -> None:
        root = self.copy_tree()
        proto = root / "proto" / "clirpc.proto"
        proto.write_text(
            proto.read_text().replace(
                "message GetStatusRequest {}",
                "message GetStatusRequest {\n"
                "\t// verbose is new.\n\tbool verbose = 1;\n}",
            )
        )
        result = self.run_check(root)
        self.assertEqual(result.returncode, 1)
        self.assertIn("clirpc_pb2.py", result.stdout)

    def test_edited_generated_file_is_detected(self) -> None:
        root = self.copy_tree()
        generated = root / "barterbackup" / "_proto" / "storedpb_pb2.pyi"
        generated.write_text(generated.read_text() + "\n# edited by hand\n")
        result = self.run_check(root)
        self.assertEqual(result.returncode, 1)
        self.assertIn("storedpb_pb2.pyi", result.stdout)
