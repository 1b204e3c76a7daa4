// Checks vmsilo.h's colour helpers (compiled with KWin's own flags).
#include "vmsilo.h"
#include <cstdio>
int main()
{
    struct Case { const char *bg; const char *text; } cases[] = {
        {"#ff0000", "#000000"}, {"#2ecc71", "#000000"}, {"#3498db", "#000000"}, {"#800080", "#ffffff"},
        {"#000000", "#ffffff"}, {"#ffffff", "#000000"}, {"#0000ff", "#ffffff"}, {"#777777", "#000000"},
        {"#767676", "#000000"}, {"#595959", "#ffffff"}, {"#808000", "#000000"}, {"#e74c3c", "#000000"}, {"#8e44ad", "#ffffff"},
    };
    int fails = 0;
    for (const auto &c : cases) {
        const QString got = KWin::Vmsilo::textColor(QColor::fromString(QString::fromLatin1(c.bg))).name();
        if (got != QLatin1String(c.text)) { std::printf("FAIL %s -> %s (want %s)\n", c.bg, qPrintable(got), c.text); fails++; }
    }
    const char *valid[] = {"#2ecc71", "#ABCDEF"}; const char *invalid[] = {"red", "#abc", "#2ecc711", "", " #2ecc71", "rgb(1,2,3)"};
    for (auto v : valid) if (!KWin::Vmsilo::isValidColor(QString::fromLatin1(v))) { std::printf("FAIL valid %s\n", v); fails++; }
    for (auto v : invalid) if (KWin::Vmsilo::isValidColor(QString::fromLatin1(v))) { std::printf("FAIL invalid %s\n", v); fails++; }
    std::printf(fails ? "FAILED\n" : "vmsilo colour helpers OK\n");
    return fails != 0;
}
