"""Entry point of the preprocessing Flex Template (FLEX_TEMPLATE_PYTHON_PY_FILE).

The Dataflow launcher runs this file with each template parameter as `--name=value`,
followed by the Dataflow options of the launch (`--runner`, `--project`, `--region`,
`--staging_location`, `--template_location=.../job_object`, ...). Template parameters are
named with underscores (metadata.json), the command's flags with dashes, so the flags
of `pipelines.preprocess` are translated and everything else is left to Beam::

    --data_dir=gs://B/speech  --waveforms=false  --runner=DataflowRunner
    ->  --data-dir=gs://B/speech  --no-waveforms  --runner=DataflowRunner

Then `pipelines.preprocess` runs as on the command line: it checks the inputs, prepares
the output folder and writes the job, which the launcher submits.
"""

from __future__ import annotations

import sys
from typing import Optional

# Parameters that take a value, by their template name.
VALUE_FLAGS = ("data_dir", "output_dir", "labels", "split", "seed", "split_salt",
               "val_percent", "test_percent", "num_shards", "compression",
               "max_rejected_fraction")
# Parameters given as true/false: the flag to pass for each value (None: pass nothing).
BOOLEAN_FLAGS = {
    "waveforms": {"true": "--waveforms", "false": "--no-waveforms"},
    "overwrite": {"true": "--overwrite", "false": None},
}


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
            translated.append(f"--{name.replace('_', '-')}{equals}{value}")
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


def main(argv: Optional[list[str]] = None) -> int:
    from pipelines import preprocess  # imported here so the translation is testable alone
    return preprocess.main(preprocess_argv(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
