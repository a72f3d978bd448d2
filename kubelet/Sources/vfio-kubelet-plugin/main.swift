import VFIOKubeletCommands

await KubeletPlugin.runMain()
