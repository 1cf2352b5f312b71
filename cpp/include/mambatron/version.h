#pragma once
#define MAMBATRON_VERSION "0.1.0"
