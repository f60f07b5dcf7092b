"""Rebuild the shipped corpus from the vaderSentiment 3.3.2 source distribution (provenance, not needed at run time).

    pip download --no-binary :all: --no-deps vaderSentiment==3.3.2 -d /tmp/v
    PYTHONPATH=. python calibration_data/make_corpus.py /tmp/v/vaderSentiment-3.3.2.tar.gz

Writes calibration_data/vader/<source>.tsv (id, score, text; UTF-8, LF) from the
`*_GroundTruth.txt` files inside additional_resources/hutto_ICWSM_2014.tar.gz, then
calibration_data/calibration.txt, the calibration split of models.data (one sentence per line).
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

from models.data import CALIBRATION_FILE, LABELLED_DIR, calibration_subset, labelled_sentences
from trt_runtime.contract.files import write_text_atomic

GROUND_TRUTH = {
    "tweets": "tweets_GroundTruth.txt",
    "movie_reviews": "movieReviewSnippets_GroundTruth.txt",
    "nyt_editorials": "nytEditorialSnippets_GroundTruth.txt",
    "amazon_reviews": "amazonReviewSnippets_GroundTruth.txt",
}


def ground_truth_files(sdist: Path) -> dict[str, bytes]:
    with tarfile.open(sdist) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(inner_member).read()  # type: ignore[union-attr]
    found = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for member in inner.getmembers():
            name = Path(member.name).name
            if name in GROUND_TRUTH.values():
                found[name] = inner.extractfile(member).read()  # type: ignore[union-attr]
    return found


def to_tsv(raw: bytes) -> str:
    lines = []
    for line in raw.decode("utf-8").splitlines():
        if not line.strip():
            continue
        sentence_id, score, text = line.split("\t", 2)
        float(score)  # every score parses
        text = text.strip()
        if "\t" in text:
            raise ValueError(f"a tab inside sentence {sentence_id}")
        lines.append(f"{sentence_id.strip()}\t{score.strip()}\t{text}\n")
    return "".join(lines)


def main(sdist: str) -> None:
    files = ground_truth_files(Path(sdist))
    for source, file_name in GROUND_TRUTH.items():
        write_text_atomic(LABELLED_DIR / f"{source}.tsv", to_tsv(files[file_name]))
    calibration = calibration_subset()
    write_text_atomic(CALIBRATION_FILE, "".join(f"{text}\n" for text in calibration))
    for split in ("calibration", "train", "dev", "test"):
        print(f"{split}: {len(labelled_sentences(split))} sentences")
    print(f"{CALIBRATION_FILE}: {len(calibration)} unique sentences")


if __name__ == "__main__":
    main(sys.argv[1])
