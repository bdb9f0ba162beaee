#!/usr/bin/env bash
# The patch series (patches/series) as a git branch, and back; and its rebase onto another llama.cpp.
#
#   scripts/patches.sh checkout DIR        DIR: a git repository of the pinned llama.cpp (vendor/llama.cpp
#                                          of the sdist in patches/series) whose commit "base" is the
#                                          pristine tree and whose branch "tq" carries one commit per patch
#   scripts/patches.sh export DIR          patches/*.patch and the list in patches/series from base..tq
#                                          (git format-patch, fixed dates: the files change only with the code)
#   scripts/patches.sh rebase DIR SOURCE   the tq branch onto another llama.cpp tree: SOURCE is an sdist
#                                          (llama_cpp_python-X.tar.gz), a llama.cpp checkout or an unpacked
#                                          tree. Its tree becomes the commit "upstream" on top of base, and
#                                          `git rebase` replays the series on it with three-way merges; on a
#                                          conflict git stops: fix the files, `git add`, `git -C DIR rebase
#                                          --continue`, then `export` (docs/design.md, Carrying the patches)
#
# Edit the code on the tq branch (commit --fixup and rebase --autosquash keep one commit per patch),
# then export. The sdist comes from TQ_CACHE_DIR (default ~/.cache/tq-llamacpp), where the build keeps it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
series=$root/patches/series
sdist_name=$(sed -n 's/^# sdist: *//p' "$series")
sdist_sha=$(sed -n 's/^# sha256: *//p' "$series")
cache=${TQ_CACHE_DIR:-$HOME/.cache/tq-llamacpp}
# one author for every commit (export fixes the dates), so that the same code gives the same bytes
export GIT_AUTHOR_NAME=tq-llamacpp GIT_AUTHOR_EMAIL=tq-llamacpp@localhost GIT_COMMITTER_NAME=tq-llamacpp
export GIT_COMMITTER_EMAIL=tq-llamacpp@localhost GIT_AUTHOR_DATE="2026-01-01T00:00:00Z" GIT_COMMITTER_DATE="2026-01-01T00:00:00Z"

die() { echo "patches.sh: $*" >&2; exit 2; }

# unpack_tree SOURCE DEST: the llama.cpp tree of an sdist, a checkout or a folder, without .git
unpack_tree() {
    local src=$1 dest=$2
    rm -rf "$dest" && mkdir -p "$dest"
    if [ -f "$src" ]; then
        local top
        top=$(basename "$src" .tar.gz)  # llama_cpp_python-X: the top folder of an sdist
        tar -xzf "$src" -C "$dest" --strip-components=3 "$top/vendor/llama.cpp"
    elif [ -d "$src/.git" ] || [ -f "$src/.git" ]; then
        git -C "$src" archive --format=tar HEAD | tar -xf - -C "$dest"
    else
        cp -a "$src/." "$dest/"
    fi
    rm -rf "$dest/.git"
}

# commit_tree DIR MESSAGE: the work tree as it is, every file (the sdist ships ignored files too)
commit_tree() {
    git -C "$1" add -A -f . && git -C "$1" commit -q --allow-empty -m "$2"
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: patches.sh checkout|export DIR | rebase DIR SOURCE"

case $cmd in
checkout)
    [ ! -e "$dir" ] || die "$dir exists: give a new folder"
    sdist=$cache/$sdist_name
    if [ ! -f "$sdist" ]; then
        python3 "$root/tq_llamacpp/_registry.py" "llama-cpp-python==$(echo "$sdist_name" | sed 's/llama_cpp_python-\(.*\)\.tar\.gz/\1/')" \
            "$cache" --filename "$sdist_name" --sha256 "$sdist_sha" >/dev/null
    fi
    echo "$sdist_sha  $sdist" | sha256sum -c --quiet
    unpack_tree "$sdist" "$dir"
    git -C "$dir" init -q -b pristine
    commit_tree "$dir" "llama.cpp of $sdist_name ($(sed -n 's/^# base: *//p' "$series"))"
    git -C "$dir" tag -f base >/dev/null
    git -C "$dir" checkout -q -b tq
    patches=()
    while read -r p; do case $p in ''|'#'*) ;; *) patches+=("$root/patches/$p") ;; esac; done < "$series"
    git -C "$dir" am -q -3 "${patches[@]}"
    echo "$dir: branch tq = base + ${#patches[@]} patches"
    ;;
export)
    git -C "$dir" rev-parse -q --verify base >/dev/null || die "$dir has no tag base (made by checkout)"
    rm -f "$root"/patches/*.patch
    git -C "$dir" format-patch -q --zero-commit --no-signature --full-index -o "$root/patches" base..tq
    # one date for every patch: the files change only when the code does
    sed -i 's/^Date: .*/Date: Thu, 1 Jan 2026 00:00:00 +0000/' "$root"/patches/*.patch
    { grep '^#' "$series"; (cd "$root/patches" && ls -1 -- *.patch); } > "$series.tmp"
    mv "$series.tmp" "$series"
    echo "wrote $(ls "$root"/patches/*.patch | wc -l) patches; lines added to upstream files:" \
         "$(git -C "$dir" diff base..tq --numstat | awk '{a+=$1} END {print a}')"
    ;;
rebase)
    src=${3:-}
    [ -n "$src" ] || die "rebase needs SOURCE"
    git -C "$dir" rev-parse -q --verify base >/dev/null || die "$dir has no tag base (made by checkout)"
    git -C "$dir" checkout -q -B upstream base
    find "$dir" -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {} +
    tmp=$(mktemp -d)
    unpack_tree "$src" "$tmp/tree"
    cp -a "$tmp/tree/." "$dir/"
    rm -rf "$tmp"
    commit_tree "$dir" "llama.cpp of $(basename "$src")"
    git -C "$dir" checkout -q tq
    if git -C "$dir" rebase -q --onto upstream base tq; then
        git -C "$dir" tag -f base upstream >/dev/null
        echo "rebased without conflicts; update patches/series (# sdist, # sha256, # base), then: patches.sh export $dir"
    else
        echo "conflicts (git -C $dir status): resolve, git add, git -C $dir rebase --continue; then" \
             "git -C $dir tag -f base upstream and patches.sh export $dir" >&2
        exit 1
    fi
    ;;
*) die "unknown command $cmd" ;;
esac
