"""``python -m sklearn_peek``: the same as the ``sklearn-peek`` command."""

from sklearn_peek.cli import main

raise SystemExit(main())
