from cloudq.cli import main

raise SystemExit(main())
