module github.com/reloadscope/goplugin

go 1.16

// v0.7.1 matches Kong 2.7.1's protobuf exactly (the reproduction pins it too).
require github.com/Kong/go-pdk v0.7.1
