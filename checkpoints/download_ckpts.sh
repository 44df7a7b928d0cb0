#!/usr/bin/env bash
# Download the official SAM 2 (072824) and SAM 2.1 (092824) checkpoints into this folder.
#
#   bash checkpoints/download_ckpts.sh                      # all eight files (~2.9 GB)
#   bash checkpoints/download_ckpts.sh sam2_hiera_small.pt  # one file (or several)
#   bash checkpoints/download_ckpts.sh sam2.1_hiera_s       # a -sam_config name works too
#
# Needs curl or wget and internet access. Files are written as <name>.part and renamed when complete,
# so an interrupted download never leaves a truncated .pt behind. See checkpoints/README.md.
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE="https://dl.fbaipublicfiles.com/segment_anything_2"
SAM2_DIR="072824"   # SAM 2.0 release
SAM21_DIR="092824"  # SAM 2.1 release

ALL_FILES=(
  sam2_hiera_tiny.pt sam2_hiera_small.pt sam2_hiera_base_plus.pt sam2_hiera_large.pt
  sam2.1_hiera_tiny.pt sam2.1_hiera_small.pt sam2.1_hiera_base_plus.pt sam2.1_hiera_large.pt
)

# -sam_config name -> file name
config_to_file() {
  case "$1" in
    sam2_hiera_t) echo sam2_hiera_tiny.pt ;;
    sam2_hiera_s) echo sam2_hiera_small.pt ;;
    sam2_hiera_b+) echo sam2_hiera_base_plus.pt ;;
    sam2_hiera_l) echo sam2_hiera_large.pt ;;
    sam2.1_hiera_t) echo sam2.1_hiera_tiny.pt ;;
    sam2.1_hiera_s) echo sam2.1_hiera_small.pt ;;
    sam2.1_hiera_b+) echo sam2.1_hiera_base_plus.pt ;;
    sam2.1_hiera_l) echo sam2.1_hiera_large.pt ;;
    *) echo "$1" ;;
  esac
}

url_for() {
  case "$1" in
    sam2.1_hiera_*.pt) echo "${BASE}/${SAM21_DIR}/$1" ;;
    sam2_hiera_*.pt) echo "${BASE}/${SAM2_DIR}/$1" ;;
    *) return 1 ;;
  esac
}

fetch() {
  local url="$1" out="$2"
  if command -v curl >/dev/null 2>&1; then
    curl -fL --retry 3 -o "${out}" "${url}"
  elif command -v wget >/dev/null 2>&1; then
    wget -q --show-progress -O "${out}" "${url}"
  else
    echo "error: neither curl nor wget is installed" >&2
    exit 1
  fi
}

if [ "$#" -gt 0 ]; then
  FILES=()
  for arg in "$@"; do FILES+=("$(config_to_file "$arg")"); done
else
  FILES=("${ALL_FILES[@]}")
fi

for f in "${FILES[@]}"; do
  known=0
  for a in "${ALL_FILES[@]}"; do [ "$a" = "$f" ] && known=1; done
  if [ "$known" -ne 1 ]; then
    echo "error: unknown checkpoint '$f'; choose from: ${ALL_FILES[*]} (or a -sam_config name)" >&2
    exit 2
  fi
done

for f in "${FILES[@]}"; do
  dest="${DIR}/${f}"
  if [ -s "${dest}" ]; then
    echo "${f}: already present, skipping"
    continue
  fi
  url="$(url_for "$f")"
  echo "Downloading ${f} from ${url} ..."
  if ! fetch "${url}" "${dest}.part"; then
    rm -f "${dest}.part"
    echo "error: failed to download ${url}" >&2
    exit 1
  fi
  mv "${dest}.part" "${dest}"
done
echo "Done: checkpoints are in ${DIR}"
