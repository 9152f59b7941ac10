from lorawizard.cli import main

raise SystemExit(main())
