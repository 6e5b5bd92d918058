from digits.cli import main

raise SystemExit(main())
