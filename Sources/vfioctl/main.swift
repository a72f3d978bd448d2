import VFIOCommands

await VFIOCtl.runMain()
