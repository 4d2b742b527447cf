"""The console summary of a preprocessing run, from its metadata."""

from __future__ import annotations

from pipelines import contract, dataset


def summary_table(metadata: contract.RunMetadata) -> str:
    """Examples per split and label, then how every file read was used."""
    labels = sorted({label for split in metadata.counts.values() for label in split})
    width = max([len(label) for label in labels] + [10])
    header = f"{'label':<{width}}" + "".join(f"{split:>8}" for split in contract.SPLITS)
    lines = [header, "-" * len(header)]
    for label in labels:
        lines.append(f"{label:<{width}}" + "".join(
            f"{metadata.counts.get(split, {}).get(label, 0):>8}" for split in contract.SPLITS))
    lines.append("-" * len(header))
    lines.append(f"{'total':<{width}}" + "".join(
        f"{metadata.split_total(split):>8}" for split in contract.SPLITS))
    lines.append("")
    lines.append(f"files read {metadata.files_read} = examples {metadata.examples_written}"
                 f" + background noise {metadata.background_recordings}"
                 f" + rejected {metadata.rejected} + skipped {metadata.skipped}")
    if metadata.silence_percent is not None:
        lines.append(f"plus {metadata.silence_written} {dataset.SILENCE_LABEL} examples cut "
                     "from the background noise (not files)")
    for title, by_reason in (("rejected", metadata.rejected_by_reason),
                             ("skipped", metadata.skipped_by_reason)):
        for reason, count in sorted(by_reason.items()):
            lines.append(f"  {title:<8} {count:>6}  {reason}")
    return "\n".join(lines)
