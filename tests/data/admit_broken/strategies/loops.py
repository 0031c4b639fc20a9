from qtd.strategy import Strategy


class Loops(Strategy):
    def on_bar(self, bar):
        while bar.close > 0:
            pass
