"""Entry point of the preprocessing Flex Template (FLEX_TEMPLATE_PYTHON_PY_FILE).

The Dataflow launcher runs this file with each template parameter as `--name=value`,
followed by the Dataflow options of the launch (`--runner`, `--project`, `--region`,
`--staging_location`, `--template_location=.../job_object`, ...). Template parameters are
named with underscores, the command's flags with dashes; both come from the one parser
of `pipelines.preprocess`, so a new flag is a template parameter without an edit here::

    --data_dir=gs://B/speech  --waveforms=false  --runner=DataflowRunner
    ->  --data-dir=gs://B/speech  --no-waveforms  --runner=DataflowRunner

Then `pipelines.preprocess` runs as on the command line: it checks the inputs, prepares
the output folder and writes the job, which the launcher submits.

The template's parameter list (metadata.json beside this file) is generated from the
same parser; tests/test_packaging.py fails when the file is stale. To write it::

    python deploy/dataflow/flex_template/launch_preprocess.py --template-metadata \\
        > deploy/dataflow/flex_template/metadata.json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from pipelines import preprocess

TEMPLATE_NAME = "Keyword recognition: preprocessing"
TEMPLATE_DESCRIPTION = (
    "Folders of WAV clips (DATA_DIR/<label>/*.wav) to speaker-disjoint, sharded TFRecords "
    "in OUTPUT_DIR/{train,val,test}/ with labels.txt and metadata.json "
    "(python -m pipelines.preprocess).")
# What the template's form knows of a parameter beyond the flag itself.
PARAM_TYPES = {"data_dir": "GCS_READ_FOLDER", "output_dir": "GCS_WRITE_FOLDER"}
GCS_FOLDER = r"^gs:\/\/[^\n\r]+$"
# Beam options offered on the template's form besides the command's flags.
BEAM_PARAMETERS = [{
    "name": "sdk_container_image",
    "label": "Worker image",
    "helpText": "The worker container built from deploy/dataflow/Dockerfile (default: "
                "Beam's image, the package installed at start-up).",
    "isOptional": True,
    "regexes": [r"^[^\n\r]+$"],
}]


def _flag_actions(parser: argparse.ArgumentParser):
    """(template name, flag, action) of each flag of the parser but --help."""
    for action in parser._actions:  # pylint: disable=protected-access
        flags = [option for option in action.option_strings
                 if option.startswith("--") and not option.startswith("--no-")]
        if flags and flags[0] != "--help":
            yield flags[0][2:].replace("-", "_"), flags[0], action


def command_flags(parser: argparse.ArgumentParser) -> tuple[dict, dict]:
    """The parser's flags by template name: (takes a value, given as true/false).

    Returns:
      ({name: flag}, {name: {"true": flag or None, "false": flag or None}}).
    """
    values, booleans = {}, {}
    for name, flag, action in _flag_actions(parser):
        if isinstance(action, argparse.BooleanOptionalAction):
            booleans[name] = {"true": flag, "false": f"--no-{flag[2:]}"}
        elif action.nargs == 0:  # store_true / store_false
            given = "true" if action.const is True else "false"
            booleans[name] = {given: flag, {"true": "false", "false": "true"}[given]: None}
        else:
            values[name] = flag
    return values, booleans


VALUE_FLAGS, BOOLEAN_FLAGS = command_flags(preprocess.build_parser())


def preprocess_argv(argv: list[str]) -> list[str]:
    """Translates the launcher's arguments into `pipelines.preprocess` flags.

    Args:
      argv: the arguments the launcher passed (without the program name).

    Returns:
      The same arguments with template parameters spelled as the command's flags.

    Raises:
      SystemExit: a true/false parameter has another value.
    """
    translated = []
    for argument in argv:
        name, equals, value = argument[2:].partition("=") if argument.startswith("--") \
            else ("", "", "")
        if name in VALUE_FLAGS:
            translated.append(f"{VALUE_FLAGS[name]}{equals}{value}")
        elif name in BOOLEAN_FLAGS:
            choices = BOOLEAN_FLAGS[name]
            choice = value.strip().lower() if equals else "true"
            if choice not in choices:
                raise SystemExit(f"error: --{name} must be true or false, not {value!r}")
            if choices[choice]:
                translated.append(choices[choice])
        else:
            translated.append(argument)
    return translated


def _regex(action: argparse.Action, boolean: bool) -> str:
    if boolean:
        return "^(true|false)$"
    if action.choices:
        return "^(" + "|".join(str(choice) for choice in action.choices) + ")$"
    if action.type is int:
        return "^-?[0-9]+$"
    if action.type is float:
        return r"^-?[0-9]+(\.[0-9]+)?$"
    return r"^[^\n\r]*$"


def template_metadata(parser: Optional[argparse.ArgumentParser] = None) -> dict:
    """The Flex Template's metadata.json: one parameter per flag of the parser."""
    parser = parser or preprocess.build_parser()
    parameters = []
    for name, _, action in _flag_actions(parser):
        boolean = name in BOOLEAN_FLAGS
        # BooleanOptionalAction adds its own "(default: %(default)s)" to the help.
        text = (action.help or name.replace("_", " ")).replace(
            " (default: %(default)s)", "").replace("%%", "%")
        if (not action.required and action.default not in (None, argparse.SUPPRESS)
                and "default" not in text):
            default = str(action.default).lower() if boolean else action.default
            text += f" (default: {default})"
        parameter = {"name": name, "label": name.replace("_", " ").capitalize(),
                     "helpText": text}
        if name in PARAM_TYPES:
            parameter["paramType"] = PARAM_TYPES[name]
        if not action.required:
            parameter["isOptional"] = True
        parameter["regexes"] = [GCS_FOLDER if name in PARAM_TYPES else _regex(action, boolean)]
        parameters.append(parameter)
    return {"name": TEMPLATE_NAME, "description": TEMPLATE_DESCRIPTION, "streaming": False,
            "parameters": parameters + BEAM_PARAMETERS}


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--template-metadata"]:
        print(json.dumps(template_metadata(), indent=2))
        return 0
    return preprocess.main(preprocess_argv(argv))


if __name__ == "__main__":
    sys.exit(main())
