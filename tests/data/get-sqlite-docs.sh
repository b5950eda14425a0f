#!/usr/bin/env bash
# Fetch the second eval corpus: SQLite's HTML documentation (public domain), from Debian 12's
# sqlite3-doc package (3.40.1), for `rag-gql eval tests/data/eval_questions_sqlite.jsonl`.
#
# usage: tests/data/get-sqlite-docs.sh [DEST]   (default DEST: ./corpus-sqlite)
# Needs apt-get (Debian) and dpkg-deb; downloads about 7.5 MB once and caches it in DEST/.deb.
# Copies the top-level pages of /usr/share/doc/sqlite3 (214 .html files) into DEST.
# The questions' `pages` are rag-gql's HTML sections (1-based; a heading opens one, and one
# longer than SECTION_CHARS, 4,000 characters, is cut); their `section` names the heading.
set -euo pipefail
dest=${1:-./corpus-sqlite}
mkdir -p "$dest/.deb"
cd "$dest/.deb"
if ! ls sqlite3-doc_*.deb >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download -qq sqlite3-doc 2>/dev/null
fi
rm -rf root && mkdir root
dpkg-deb -x sqlite3-doc_*.deb root
cd ..
find .deb/root/usr/share/doc/sqlite3 -maxdepth 1 -name '*.html' -exec cp -n {} . \;
rm -rf .deb/root
pwd
ls -1 ./*.html | wc -l | xargs echo "pages:"
