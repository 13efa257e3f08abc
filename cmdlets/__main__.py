from cmdlets.host.runner import main

main()
