"""Verdicts of the reference JSON Schema validator (python-jsonschema, draft 2020-12, with
format checks) for messages read from stdin, one JSON object per line:
{"topic": "...", "message": <the message>}. Prints one line per message: "valid" or
"invalid: <first error>". Used by tests/contracts.rs."""
import json
import pathlib
import sys

try:
    from jsonschema import Draft202012Validator
except ImportError:
    sys.exit("python-jsonschema is missing: python3 -m pip install jsonschema rfc3339-validator")

checker = Draft202012Validator.FORMAT_CHECKER
if "date-time" not in checker.checkers:
    sys.exit("date-time format checks need rfc3339-validator: python3 -m pip install rfc3339-validator")

schemas = {}
for path in pathlib.Path(sys.argv[1]).glob("*.schema.json"):
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    schemas[path.name.removesuffix(".schema.json")] = Draft202012Validator(schema, format_checker=checker)

for line in sys.stdin:
    case = json.loads(line)
    errors = list(schemas[case["topic"]].iter_errors(case["message"]))
    print("valid" if not errors else "invalid: " + errors[0].message[:200].replace("\n", " "))
