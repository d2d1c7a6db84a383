from seekwatch.cli import main

raise SystemExit(main())
