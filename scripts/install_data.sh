#!/usr/bin/env bash
# The offline datasets l2l reads where they are installed: Fashion-MNIST (Debian's dataset-fashion-mnist: the 60k /
# 10k IDX files under /usr/share/datasets/fashion-mnist), which `optimizee=convnet` uses by default (without it the
# conv net runs on the 5000 embedded MNIST digits, with a notice). As root on Debian/Ubuntu; `make data` runs it,
# and CI (.ci/run) before the tests. Nothing is downloaded at run time: this is the one step that installs data.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
installed() {
  for f in $FILES; do [ -s "$DIR/$f" ] || return 1; done
}
if installed; then
  echo "scripts/install_data.sh: Fashion-MNIST is installed in $DIR"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "scripts/install_data.sh: needs root to install Debian's dataset-fashion-mnist (sudo $0)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "scripts/install_data.sh: no apt-get here; put Fashion-MNIST's four IDX files in a directory and run l2l" \
       "with optimizee.data.root=DIR" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
installed || { echo "scripts/install_data.sh: dataset-fashion-mnist installed, but $DIR lacks its files" >&2; exit 1; }
echo "scripts/install_data.sh: Fashion-MNIST installed in $DIR"
