// Intentionally empty: see ../README.md.
#pragma once
