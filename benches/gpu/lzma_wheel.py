#!/usr/bin/env python3
"""Re-compresses a wheel's members with LZMA (ZIP method 14), which pip installs like any wheel.

    lzma_wheel.py IN.whl OUT.whl

For carrying a wheel where every byte counts (the device route in benches/README.md): the
onnxruntime-gpu 1.31.1 cp312 wheel goes from 255.6 MB (deflate) to 204.8 MB, four device calls
instead of five. The members' contents, names, dates and modes stay as they were, so RECORD's
hashes still match; only the compression changes.
"""

import sys
import zipfile


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, dst = argv
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_LZMA) as zout:
        for info in zin.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            member.external_attr = info.external_attr
            member.compress_type = zipfile.ZIP_LZMA
            zout.writestr(member, zin.read(info))
    with zipfile.ZipFile(dst) as check:
        bad = check.testzip()
        if bad is not None:
            print(f"{dst}: member {bad} does not read back", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
