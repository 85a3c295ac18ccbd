# Sourced by the other scripts: creates (once) the virtual environment at $ALIGNLIB_VENV
# (default .venv) and sets VENV to it.
VENV="${ALIGNLIB_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
