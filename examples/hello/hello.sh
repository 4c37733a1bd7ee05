#!/bin/sh
echo "hello from a right-sized runner"
